//! Every class of config error through the real binary: exit 2, a message that names the
//! file, the image and the field, every problem at once, and no registry touched.

use crate::support::registry::free_port;
use crate::support::runner::ImageSync;

fn rejected(yaml: &str) -> (String, String) {
    let run = ImageSync::new().config(yaml);
    let path = run.dir().join("config.yaml").display().to_string();
    let outcome = run.run();
    outcome.expect_code(2);
    assert!(!outcome.stderr.contains("panicked"), "{}", outcome.stderr);
    assert!(
        outcome.stdout.is_empty(),
        "no report for a config error: {}",
        outcome.stdout
    );
    assert!(
        outcome.stderr.contains(&path),
        "the file is named: {}",
        outcome.stderr
    );
    (outcome.stderr, path)
}

#[test]
fn a_missing_file_says_how_to_point_at_one() {
    let outcome = ImageSync::new()
        .arg("--config")
        .arg("/nonexistent/image-sync.yaml")
        .run();
    outcome.expect_code(2);
    assert!(
        outcome
            .stderr
            .contains("/nonexistent/image-sync.yaml: cannot read: file not found"),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("IMAGE_SYNC_CONFIG"));
}

#[test]
fn a_typo_in_a_key_names_the_image_field_and_line() {
    let (stderr, _) = rejected(
        "cache_registry: c:5000\nimages:\n  - source: nginx\n    tag: '1'\n  - source: redis\n    tag: '7'\n    cache_ass: x\n",
    );
    assert!(
        stderr.contains("images[1] (source `redis`): unknown field `cache_ass`"),
        "{stderr}"
    );
    assert!(stderr.contains("line 7 column 5"), "{stderr}");
}

#[test]
fn yaml_syntax_and_type_errors_keep_their_location() {
    let (stderr, _) = rejected("cache_registry: c:5000\nimages: [\n");
    assert!(stderr.contains("line"), "{stderr}");
    let (stderr, _) = rejected(
        "cache_registry: c:5000\nimages:\n  - {source: a, tag: b}\nsettings:\n  concurrency: many\n",
    );
    assert!(
        stderr.contains("settings.concurrency") && stderr.contains("line 5"),
        "{stderr}"
    );
    let (stderr, _) = rejected("images:\n  - {source: a, tag: b}\n");
    assert!(
        stderr.contains("missing field `cache_registry`"),
        "{stderr}"
    );
    let (stderr, _) = rejected("cache_registry: c\nimages:\n  - {source: a}\n");
    assert!(
        stderr.contains("images[0] (source `a`) field `tag`: missing field `tag`"),
        "{stderr}"
    );
}

#[test]
fn every_invalid_value_is_listed_at_once() {
    let (stderr, _) = rejected(
        "cache_registry: \"https://cache:5000\"\nimages:\n  - {source: \"nginx:1.27\", tag: \"1.27\"}\n  - {source: redis, tag: \"--privileged\"}\n  - {source: \"ghcr.io/a/b\", tag: \"x\", cache_as: \"Bad/Path\"}\n  - {source: \"$(reboot)\", tag: \"x\"}\nsettings:\n  concurrency: 0\n  pull_timeout_secs: 5\n  check_timeout_secs: 10\n  insecure_registries: [\"cache:5000/path\"]\n",
    );
    for fragment in [
        "8 problems",
        "cache_registry: `https://cache:5000` has a URL scheme",
        "images[0] (source `nginx:1.27`) field `source`: `nginx:1.27` contains a tag (`:1.27`); move it to the `tag` field",
        "images[1] (source `redis`) field `tag`: `--privileged` starts with `-`",
        "images[2] (source `ghcr.io/a/b`) field `cache_as`: `Bad/Path` has an invalid path component `Bad`",
        "images[3] (source `$(reboot)`) field `source`",
        "settings.concurrency: is 0; it must be between 1 and 64",
        "settings.check_timeout_secs: is 10, longer than `pull_timeout_secs` (5)",
        "settings.insecure_registries[0]",
    ] {
        assert!(
            stderr.contains(fragment),
            "missing {fragment:?} in:\n{stderr}"
        );
    }
}

#[test]
fn two_images_landing_on_one_cache_tag_are_refused() {
    let (stderr, _) = rejected(
        "cache_registry: c:5000\nimages:\n  - {source: nginx, tag: '1'}\n  - {source: docker.io/library/nginx, tag: '1'}\n",
    );
    assert!(stderr.contains("images[1] (source `docker.io/library/nginx`) field `source`: lands on the same cache image `c:5000/library/nginx:1` as images[0]"), "{stderr}");
}

#[test]
fn empty_binary_and_oversized_files_are_clear_errors() {
    let (stderr, _) = rejected("");
    assert!(stderr.contains("is empty"), "{stderr}");
    let run = ImageSync::new();
    let path = run.write("binary.yaml", b"cache_registry: \xff\xfe\n");
    let outcome = run.arg("--config").arg(&path).run();
    outcome.expect_code(2);
    assert!(
        outcome.stderr.contains("is not valid UTF-8"),
        "{}",
        outcome.stderr
    );
    let run = ImageSync::new();
    let big = run.write("big.yaml", &vec![b'#'; 5 * 1024 * 1024]);
    let outcome = run.arg("--config").arg(&big).run();
    outcome.expect_code(2);
    assert!(
        outcome.stderr.contains("a config is at most"),
        "{}",
        outcome.stderr
    );
    let (stderr, _) = rejected("cache_registry: c\nimages: []\n");
    assert!(
        stderr.contains("images: is empty; list at least one image"),
        "{stderr}"
    );
}

#[test]
fn check_prints_the_plan_and_touches_no_registry() {
    // Nothing listens on this port: --check must not notice.
    let cache = format!("127.0.0.1:{}", free_port());
    let outcome = ImageSync::new()
        .config(&format!(
            "cache_registry: \"{cache}\"\nimages:\n  - {{source: nginx, tag: \"1.27-alpine\"}}\n  - {{source: ghcr.io/project-zot/zot-linux-amd64, tag: v2.1.2, cache_as: zot/zot}}\nsettings:\n  insecure_registries: [\"{cache}\"]\n"
        ))
        .arg("--check")
        .run();
    outcome.expect_code(0);
    assert!(outcome.stdout.is_empty());
    for line in [
        "is valid: 2 image(s)".to_owned(),
        format!("[0] docker.io/library/nginx:1.27-alpine -> {cache}/library/nginx:1.27-alpine"),
        format!("[1] ghcr.io/project-zot/zot-linux-amd64:v2.1.2 -> {cache}/zot/zot:v2.1.2"),
        format!("insecure registries: {cache}"),
    ] {
        assert!(
            outcome.stderr.contains(&line),
            "missing {line:?} in {}",
            outcome.stderr
        );
    }
}

#[test]
fn an_upper_case_namespace_is_refused_not_taken_for_a_registry_host() {
    // `MyTeam/app` used to pass as registry host `myteam` (`-> c:5000/app`).
    let (stderr, _) =
        rejected("cache_registry: c:5000\nimages:\n  - {source: MyTeam/app, tag: '1'}\n");
    assert!(
        stderr.contains("images[0] (source `MyTeam/app`) field `source`: `MyTeam/app` has upper-case letters in `MyTeam`: repository names must be lowercase (write `myteam/app`)"),
        "{stderr}"
    );
}

#[test]
fn a_mis_indented_tag_is_reported_at_its_own_line() {
    let (stderr, _) = rejected(
        "cache_registry: c:5000\nimages:\n  - source: nginx\n    tag: '1'\n  - source: redis\n   tag: '7'\n",
    );
    assert!(stderr.contains("at line 6 column 4"), "{stderr}");
    assert!(stderr.contains("check the indentation"), "{stderr}");
    assert!(!stderr.contains("missing field"), "{stderr}");
}

#[test]
fn a_tab_is_named_with_its_line_and_column() {
    let (stderr, _) = rejected("cache_registry: c:5000\nimages:\n  - source: nginx\n\ttag: '1'\n");
    assert!(
        stderr.contains("a tab character at line 4 column 1; YAML indents with spaces"),
        "{stderr}"
    );
}

#[test]
fn the_wrong_shape_is_described_in_config_words() {
    let (stderr, _) = rejected("just a string\n");
    assert!(
        stderr.contains("expected a mapping with `cache_registry`, `images` and optionally `settings` at the top level"),
        "{stderr}"
    );
    let (stderr, _) = rejected("cache_registry: c:5000\nimages:\n  - nginx\n");
    assert!(
        stderr.contains("images[0]: invalid type: string \"nginx\", expected an image: a mapping with `source`, `tag`"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Raw") && !stderr.contains("struct"),
        "{stderr}"
    );
}

#[test]
fn a_tag_left_in_source_gets_the_move_hint_on_the_first_run() {
    let (stderr, _) =
        rejected("cache_registry: c:5000\nimages:\n  - source: \"nginx:1.27-alpine\"\n");
    assert!(
        stderr.contains("images[0] (source `nginx:1.27-alpine`) field `tag`: missing field `tag` (or `tags`, for tag rules); the tag is in `source`: move `1.27-alpine` into `tag:`"),
        "{stderr}"
    );
}

#[test]
fn an_insecure_entry_that_matches_no_registry_is_refused_at_check() {
    // The cache host without its port: valid at --check before, a TLS failure in the cluster.
    let run = ImageSync::new()
        .config("cache_registry: \"image-cache.image-cache.svc.cluster.local:5000\"\nimages:\n  - {source: nginx, tag: '1'}\nsettings:\n  insecure_registries: [\"image-cache.image-cache.svc.cluster.local\"]\n")
        .arg("--check");
    let outcome = run.run();
    outcome.expect_code(2);
    assert!(
        outcome.stderr.contains("settings.insecure_registries[0]: `image-cache.image-cache.svc.cluster.local` names no registry of this config (it names `docker.io`, `image-cache.image-cache.svc.cluster.local:5000`); add the port: `image-cache.image-cache.svc.cluster.local:5000`"),
        "{}",
        outcome.stderr
    );
}
