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

#[test]
fn completions_man_page_and_schema_need_no_config() {
    // No config file anywhere: these describe the program, not a run.
    let missing = "/nonexistent/image-sync/config.yaml";
    for shell in ["bash", "zsh", "fish"] {
        let outcome = ImageSync::new()
            .args(["--config", missing, "completions", shell])
            .run();
        outcome.expect_code(0);
        for word in ["image-sync", "hosts-toml", "config-schema", "dry-run"] {
            assert!(
                outcome.stdout.contains(word),
                "{shell} completions lack {word:?}:\n{}",
                outcome.stdout
            );
        }
    }
    let outcome = ImageSync::new()
        .args(["--config", missing, "completions", "powershell"])
        .run();
    outcome.expect_code(2);

    let outcome = ImageSync::new().args(["--config", missing, "man"]).run();
    outcome.expect_code(0);
    for text in [
        ".TH image-sync 1",
        "hosts\\-toml",
        "\\-\\-dry\\-run",
        "Exit codes:",
    ] {
        assert!(
            outcome.stdout.contains(text),
            "man page lacks {text:?}:\n{}",
            outcome.stdout
        );
    }

    let outcome = ImageSync::new()
        .args(["--config", missing, "config-schema"])
        .run();
    outcome.expect_code(0);
    let schema: serde_json::Value = serde_json::from_str(&outcome.stdout).expect("JSON schema");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
}

#[test]
fn bash_completes_subcommands_and_flags_from_the_generated_script() {
    let outcome = ImageSync::new().args(["completions", "bash"]).run();
    outcome.expect_code(0);
    let run = ImageSync::new();
    let script = run.write("image-sync.bash", outcome.stdout.as_bytes());
    // Real bash sources the script and asks its completion function, as a shell would on
    // `image-sync hos<TAB>` and `image-sync --dry<TAB>`.
    let ask = |words: &str, current: usize| {
        let program = format!(
            "source {script}; COMP_WORDS=({words}); COMP_CWORD={current}; \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _image__sync image-sync \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script = script.display()
        );
        let output = std::process::Command::new("bash")
            .args(["--norc", "-c", &program])
            .output()
            .expect("bash runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let replies = ask("image-sync hos", 1);
    assert_eq!(replies.trim(), "hosts-toml", "{replies}");
    let replies = ask("image-sync --dry", 1);
    assert_eq!(replies.trim(), "--dry-run", "{replies}");
}

/// Issue 18 item 12: `--pushgateway` and `IMAGE_SYNC_PUSHGATEWAY` get the check
/// `settings.pushgateway` gets (http(s), no credentials), before any request, and the
/// error never repeats the credentials.
#[test]
fn a_pushgateway_from_the_command_line_or_the_environment_is_validated_and_redacted() {
    for bad in [
        "http://alice:s3cr3t-pw@127.0.0.1:9091",
        "ftp://alice:s3cr3t-pw@127.0.0.1:9091",
        "not a url s3cr3t-pw",
    ] {
        let by_flag = ImageSync::new()
            .config(VALID)
            .args(["--check", "--pushgateway", bad])
            .without_env("IMAGE_SYNC_PUSHGATEWAY")
            .run();
        let by_env = ImageSync::new()
            .config(VALID)
            .arg("--check")
            .env("IMAGE_SYNC_PUSHGATEWAY", bad)
            .run();
        for outcome in [by_flag, by_env] {
            outcome.expect_code(2);
            assert!(
                outcome
                    .stderr
                    .contains("invalid --pushgateway (or IMAGE_SYNC_PUSHGATEWAY)"),
                "{bad}: {}",
                outcome.stderr
            );
            if bad.contains('@') {
                assert!(!outcome.stderr.contains("s3cr3t-pw"), "{}", outcome.stderr);
                assert!(!outcome.stderr.contains("alice"), "{}", outcome.stderr);
            }
        }
    }
    let fine = ImageSync::new()
        .config(VALID)
        .args(["--check", "--pushgateway", "http://127.0.0.1:9091"])
        .run();
    fine.expect_code(0);
    let empty = ImageSync::new()
        .config(VALID)
        .arg("--check")
        .env("IMAGE_SYNC_PUSHGATEWAY", "")
        .run();
    empty.expect_code(0);
}
