//! `image-sync discover --manifests`: the corpus under tests/discover (every workload kind,
//! every spelling of a reference, duplicates, decoys, invalid references, a file that is
//! not YAML), real `helm template` and `kustomize build` output piped in, and `--against`
//! with its exit codes.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::discover::{entries, entry, images};
use crate::support::runner::{ImageSync, Outcome};
use crate::support::{extra_tool, repo_path};

fn fixtures() -> PathBuf {
    repo_path("tests/discover")
}

/// The stdout of a real tool (helm, kustomize), run in the repository, which must succeed.
fn tool_output(tool: &Path, args: &[&str]) -> Vec<u8> {
    let output = std::process::Command::new(tool)
        .args(args)
        .current_dir(repo_path(""))
        .output()
        .expect("run tool");
    assert!(
        output.status.success(),
        "{} {args:?}: {}",
        tool.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn lines(outcome: &Outcome) -> Vec<&str> {
    outcome.stdout.lines().collect()
}

#[test]
fn the_corpus_lists_every_kind_and_spelling_once_and_no_decoy() {
    let corpus = fixtures().join("corpus");
    let run = ImageSync::new()
        .args(["discover", "--manifests"])
        .arg(&corpus)
        .run();
    run.expect_code(0);
    let expected = std::fs::read_to_string(fixtures().join("corpus.expected")).expect("expected");
    assert_eq!(run.stdout, expected, "stderr:\n{}", run.stderr);
    assert_eq!(lines(&run).len(), 12);
    assert!(!run.stdout.contains("decoy"));
    // Sorted and unique: `nginx`, `docker.io/library/nginx:latest` are one line.
    let mut sorted = lines(&run);
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, lines(&run));

    // The same files, one by one and through stdin, give the same list.
    let files = [
        corpus.join("workloads.yaml"),
        corpus.join("decoys.yaml"),
        corpus.join("apps/list.yml"),
        corpus.join("apps/nested/pods.json"),
    ];
    let mut one_by_one = ImageSync::new().arg("discover");
    for file in &files {
        one_by_one = one_by_one.arg("--manifests").arg(file);
    }
    let one_by_one = one_by_one.run();
    one_by_one.expect_code(0);
    assert_eq!(one_by_one.stdout, expected);
    let mut yaml = Vec::new();
    for file in &files[..3] {
        yaml.extend(b"---\n");
        yaml.extend(std::fs::read(file).expect("read"));
    }
    let piped = ImageSync::new()
        .args(["discover", "--manifests", "-", "--manifests"])
        .arg(&files[3])
        .run_with_stdin(&yaml);
    piped.expect_code(0);
    assert_eq!(piped.stdout, expected);
}

#[test]
fn json_says_where_each_image_was_found() {
    let run = ImageSync::new()
        .args(["discover", "--format", "json", "--manifests"])
        .arg(fixtures().join("corpus"))
        .run();
    run.expect_code(0);
    let entries = entries(&run);
    assert_eq!(entries.len(), 12);
    let find = |image: &str| -> Vec<String> {
        entry(&entries, image)["found_in"]
            .as_array()
            .expect("found_in")
            .iter()
            .map(|f| {
                format!(
                    "{}/{}/{}/{}",
                    f["kind"].as_str().expect("kind"),
                    f["namespace"].as_str().unwrap_or("-"),
                    f["name"].as_str().expect("name"),
                    f["container"].as_str().expect("container")
                )
            })
            .collect()
    };
    assert_eq!(
        find("docker.io/library/nginx:latest"),
        ["Pod/shop/web/nginx", "Pod/shop/web/sidecar"]
    );
    assert_eq!(
        find("docker.io/library/busybox:latest"),
        ["Pod/shop/web/debugger", "Pod/shop/web/init"]
    );
    // A Deployment in a file and again inside a `kind: List`, and a ReplicaSet.
    assert_eq!(
        find("docker.io/org/app:1"),
        [
            "Deployment/shop/api/api",
            "Deployment/shop/api/api",
            "ReplicaSet/shop/api-rs/api"
        ]
    );
    let hex = "a".repeat(64);
    // `postgres:16.4@sha256:...` and `...postgres@sha256:...` are one digest reference.
    assert_eq!(
        find(&format!("docker.io/library/postgres@sha256:{hex}")),
        ["Job/data/migrate/migrate", "StatefulSet/data/db/postgres"]
    );
    assert_eq!(
        find("localhost:5000/reports:2024.1"),
        ["CronJob/data/report/report"]
    );
    assert_eq!(
        find("docker.io/library/redis:7"),
        ["ReplicationController/old/legacy/legacy"]
    );
    assert_eq!(
        find("ghcr.io/example/worker:V1"),
        ["PodTemplate/shop/template/worker"]
    );
    assert_eq!(
        find("quay.io/prometheus/busybox:glibc"),
        ["DaemonSet/kube-system/agent/setup"]
    );
    assert_eq!(find("docker.io/library/alpine:3.20"), ["Job/shop/nested/n"]);
    assert_eq!(find("[::1]:5000/local/app:v3"), ["Pod/shop/from-kubectl/c"]);
}

#[test]
fn the_config_format_is_a_config_image_sync_accepts() {
    let run = ImageSync::new()
        .args(["discover", "--format", "config", "--manifests"])
        .arg(fixtures().join("corpus"))
        .run();
    run.expect_code(0);
    let check = ImageSync::new();
    let config = format!("cache_registry: 127.0.0.1:5000\n{}", run.stdout);
    let check = check.config(&config).arg("--check").run();
    check.expect_code(0);
    // 11 entries: the digest-only `ghcr.io/example/agent@sha256:...` has no tag for a pin
    // and is left as a comment; `postgres:16.4@sha256:...` becomes tag 16.4 pinned.
    assert!(check.stderr.contains("11 image(s)"), "{}", check.stderr);
    assert!(run.stdout.contains(&format!(
        "  - source: \"docker.io/library/postgres\"\n    tag: \"16.4\"\n    digest: sha256:{}\n",
        "a".repeat(64)
    )));
    assert!(run.stdout.contains("  # ghcr.io/example/agent@sha256:"));
}

#[test]
fn invalid_references_are_reported_with_where_they_were_found() {
    let run = ImageSync::new()
        .args(["discover", "--format", "json", "--manifests"])
        .arg(fixtures().join("invalid-refs.yaml"))
        .run();
    run.expect_code(1);
    let entries = entries(&run);
    let errors: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e.get("error").is_some())
        .map(|e| {
            (
                e["image"].as_str().expect("image").to_owned(),
                e["found_in"][0]["container"]
                    .as_str()
                    .expect("container")
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            ("(not a string)".to_owned(), "number".to_owned()),
            ("MyTeam/App:1".to_owned(), "upper".to_owned()),
            ("nginx@sha256:abc".to_owned(), "bad-digest".to_owned()),
            ("{{ .Values.image }}".to_owned(), "unrendered".to_owned()),
        ]
    );
    // The valid one is still listed.
    assert_eq!(entries[0]["image"], "docker.io/library/nginx:1.27");
    assert!(
        run.stderr.contains("container=unrendered"),
        "{}",
        run.stderr
    );
    // In the list format the valid images stay on stdout, the invalid ones go to stderr.
    let list = ImageSync::new()
        .args(["discover", "--manifests"])
        .arg(fixtures().join("invalid-refs.yaml"))
        .run();
    list.expect_code(1);
    assert_eq!(list.stdout, "docker.io/library/nginx:1.27\n");
    assert!(list.stderr.contains("invalid digest"), "{}", list.stderr);
}

#[test]
fn a_file_that_is_not_yaml_is_an_error_naming_file_and_line() {
    let file = fixtures().join("not-yaml.yaml");
    let run = ImageSync::new()
        .args(["discover", "--manifests"])
        .arg(&file)
        .run();
    run.expect_error(2, &format!("{}: line 7: is not valid YAML", file.display()));
    let text = ImageSync::new()
        .args(["discover", "--manifests", "-"])
        .run_with_stdin(b"apiVersion: v1\nkind: Pod\n---\nhello world\n");
    text.expect_code(2);
    assert!(
        text.stderr
            .contains("-: line 4: is not a Kubernetes manifest"),
        "{}",
        text.stderr
    );
    let binary = ImageSync::new()
        .args(["discover", "--manifests", "-"])
        .run_with_stdin(b"a: 1\n\xff\xfe");
    binary.expect_code(2);
    assert!(
        binary.stderr.contains("-: line 2: is not UTF-8"),
        "{}",
        binary.stderr
    );
    let missing = ImageSync::new()
        .args(["discover", "--manifests", "/nonexistent/dir"])
        .run();
    missing.expect_code(2);
    assert!(
        missing.stderr.contains("/nonexistent/dir: cannot read"),
        "{}",
        missing.stderr
    );
    // Neither manifests nor a cluster: a usage error.
    ImageSync::new().arg("discover").run().expect_code(2);
}

#[test]
fn helm_template_output_pipes_into_discover() {
    let Some(helm) = extra_tool("helm") else {
        return;
    };
    let fixture = fixtures().join("chart");
    let rendered = tool_output(
        &helm,
        &["template", "shop", fixture.to_str().expect("utf-8")],
    );
    let run = ImageSync::new()
        .args(["discover", "--manifests", "-"])
        .run_with_stdin(&rendered);
    run.expect_code(0);
    assert_eq!(
        lines(&run),
        [
            "docker.io/library/busybox:1.36",
            "docker.io/library/postgres:16",
            "docker.io/library/redis:7.4",
            "ghcr.io/example/shop:2.4.1",
        ]
    );
    // A value set on the command line shows in the discovered list.
    let rendered = tool_output(
        &helm,
        &[
            "template",
            "shop",
            fixture.to_str().expect("utf-8"),
            "--set",
            "migrations.enabled=false",
        ],
    );
    let run = ImageSync::new()
        .args(["discover", "--manifests", "-"])
        .run_with_stdin(&rendered);
    assert_eq!(
        lines(&run),
        ["docker.io/library/redis:7.4", "ghcr.io/example/shop:2.4.1"]
    );
    // The project's own chart: the image-sync image itself, from the CronJob and the Job.
    let rendered = tool_output(&helm, &["template", "image-sync", "charts/image-sync"]);
    let run = ImageSync::new()
        .args(["discover", "--format", "json", "--manifests", "-"])
        .run_with_stdin(&rendered);
    run.expect_code(0);
    let entries = entries(&run);
    let images = images(&entries);
    assert!(
        images
            .iter()
            .all(|i| i.starts_with("ghcr.io/pleme-io/image-sync:")),
        "{images:?}"
    );
    let kinds: Vec<&str> = entries[0]["found_in"]
        .as_array()
        .expect("found_in")
        .iter()
        .map(|f| f["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["CronJob", "Job"]);
}

#[test]
fn kustomize_build_of_the_projects_k8s_pipes_into_discover() {
    let Some(kustomize) = extra_tool("kustomize") else {
        return;
    };
    let mut images = Vec::new();
    for dir in [
        "k8s/clusters/scale-test/infrastructure/image-sync",
        "k8s/clusters/scale-test/infrastructure/image-cache",
    ] {
        let rendered = tool_output(&kustomize, &["build", dir]);
        let run = ImageSync::new()
            .args(["discover", "--manifests", "-"])
            .run_with_stdin(&rendered);
        run.expect_code(0);
        images.extend(run.stdout.lines().map(str::to_owned));
    }
    assert_eq!(images.len(), 2, "{images:?}");
    assert!(
        images[0].starts_with("ghcr.io/pleme-io/image-sync:"),
        "{images:?}"
    );
    assert!(
        images[1].starts_with("ghcr.io/project-zot/zot:"),
        "{images:?}"
    );
}

#[test]
fn against_a_config_reports_uncovered_and_unused_with_exit_codes() {
    let chart_images = "images:\n  - {source: busybox, tag: \"1.36\"}\n  - {source: docker.io/library/postgres, tag: \"16\"}\n  - {source: ghcr.io/example/shop, tag: \"2.4.1\", cache_as: shop}\n";
    let rendered = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: shop}\nspec:\n  template:\n    spec:\n      initContainers: [{name: w, image: \"busybox:1.36\"}]\n      containers:\n        - {name: shop, image: \"cache.local:5000/mirror/shop:2.4.1\"}\n        - {name: db, image: \"postgres:16\"}\n";
    // Everything covered: exit 0, empty arrays. The shop image names the cache directly
    // (`cache_registry` + `cache_as`), the others their upstream names.
    let run = ImageSync::new();
    let config = run.write(
        "config.yaml",
        format!("cache_registry: cache.local:5000/mirror\n{chart_images}").as_bytes(),
    );
    let covered = run
        .args(["discover", "--manifests", "-", "--against"])
        .arg(&config)
        .run_with_stdin(rendered.as_bytes());
    covered.expect_code(0);
    let report: Value = serde_json::from_str(&covered.stdout).expect("json");
    assert_eq!(
        report,
        serde_json::json!({"uncovered": [], "unused": [], "invalid": []})
    );

    // One more workload image and one config entry nobody uses: exit 1.
    let run = ImageSync::new();
    let config = run.write(
        "config.yaml",
        format!(
            "cache_registry: cache.local:5000/mirror\n{chart_images}  - {{source: redis, tag: \"7\"}}\n"
        )
        .as_bytes(),
    );
    let extra = format!(
        "{rendered}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: extra}}\nspec:\n  containers: [{{name: a, image: \"alpine:3.20\"}}, {{name: b, image: \"${{IMAGE}}\"}}]\n"
    );
    let uncovered = run
        .args(["discover", "--manifests", "-", "--against"])
        .arg(&config)
        .run_with_stdin(extra.as_bytes());
    uncovered.expect_code(1);
    let report: Value = serde_json::from_str(&uncovered.stdout).expect("json");
    assert_eq!(
        report["uncovered"],
        serde_json::json!(["docker.io/library/alpine:3.20"])
    );
    assert_eq!(
        report["unused"],
        serde_json::json!(["docker.io/library/redis:7"])
    );
    assert_eq!(report["invalid"][0]["image"], "${IMAGE}");
    assert_eq!(report["invalid"][0]["found_in"][0]["container"], "b");

    // An invalid config: exit 2, nothing on stdout.
    let run = ImageSync::new();
    let config = run.write(
        "config.yaml",
        b"cache_registry: c\nimages:\n  - {source: \"Bad Name\", tag: x}\n",
    );
    let invalid = run
        .args(["discover", "--manifests", "-", "--against"])
        .arg(&config)
        .run_with_stdin(rendered.as_bytes());
    invalid.expect_error(2, "Bad Name");
    let missing = ImageSync::new()
        .args([
            "discover",
            "--manifests",
            "-",
            "--against",
            "/nonexistent.yaml",
        ])
        .run();
    missing.expect_code(2);
}
