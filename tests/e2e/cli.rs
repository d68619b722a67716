//! The command line: help, version, config path precedence, usage errors, log format.

use crate::support::runner::ImageSync;

const VALID: &str = "cache_registry: \"127.0.0.1:1\"\nimages:\n  - {source: nginx, tag: \"1\"}\n";

#[test]
fn help_documents_the_options_and_exit_codes() {
    let outcome = ImageSync::new().arg("--help").run();
    outcome.expect_code(0);
    for text in [
        "--config <PATH>",
        "--dry-run",
        "--check",
        "--log-format",
        "IMAGE_SYNC_CONFIG",
        "/etc/image-sync/config.yaml",
        "Exit codes:",
        "130",
        "143",
    ] {
        assert!(
            outcome.stdout.contains(text),
            "missing {text:?} in --help:\n{}",
            outcome.stdout
        );
    }
}

#[test]
fn version_matches_the_crate() {
    let outcome = ImageSync::new().arg("--version").run();
    outcome.expect_code(0);
    assert_eq!(
        outcome.stdout.trim(),
        format!("image-sync {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_flags_are_usage_errors() {
    let outcome = ImageSync::new().arg("--cofnig").arg("x").run();
    outcome.expect_code(2);
    assert!(outcome.stderr.contains("--cofnig"));
}

#[test]
fn the_config_flag_wins_over_the_environment_which_wins_over_the_default() {
    let run = ImageSync::new();
    let good = run.write("good.yaml", VALID.as_bytes());
    let outcome = run.env("IMAGE_SYNC_CONFIG", &good).arg("--check").run();
    outcome.expect_code(0);
    assert!(
        outcome.stderr.contains(&good.display().to_string()),
        "{}",
        outcome.stderr
    );

    let run = ImageSync::new();
    let good = run.write("good.yaml", VALID.as_bytes());
    let outcome = run
        .env("IMAGE_SYNC_CONFIG", "/nonexistent/env.yaml")
        .arg("--config")
        .arg(&good)
        .arg("--check")
        .run();
    outcome.expect_code(0);

    let outcome = ImageSync::new().arg("--check").run();
    if !std::path::Path::new("/etc/image-sync/config.yaml").exists() {
        outcome.expect_code(2);
        assert!(
            outcome.stderr.contains("/etc/image-sync/config.yaml"),
            "{}",
            outcome.stderr
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line_on_stderr() {
    let run = ImageSync::new();
    let good = run.write("good.yaml", VALID.as_bytes());
    let outcome = run
        .arg("--config")
        .arg(&good)
        .arg("--check")
        .arg("--log-format")
        .arg("json")
        .run();
    outcome.expect_code(0);
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value.get("level").is_some(), "{line}");
    }
}
