//! The first hour of a new user: mistakes caught at `--check` that used to show up only in
//! the cluster (Docker Hub credentials under a key crane ignores, a ConfigMap checked
//! as it is), and logs that say what image-sync did (no library noise at `RUST_LOG=debug`)
//! and where it looked for crane.

use crate::support::image::{self, Format, Kind};
use crate::support::runner::ImageSync;
use crate::support::{bin_with, pair};

/// A Docker config with Docker Hub credentials keyed `docker.io`: crane ignores that key.
const DOCKER_IO_KEYED: &str = r#"{"auths": {"docker.io": {"auth": "c3luYy1ib3Q6czNjcmV0"}}}"#;

const HUB_WARNING: &str = "Docker Hub credentials are keyed `auths.docker.io`, which crane ignores: Docker Hub pulls go anonymous";

#[test]
fn a_docker_io_key_in_the_docker_config_warns_at_check_and_at_run_start() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "hub-key",
        &format!("{up}/team/app:1"),
        Format::Oci,
    );
    let yaml = format!(
        "cache_registry: \"{}\"\nimages:\n  - {{source: \"{up}/team/app\", tag: \"1\"}}\n",
        p.cache.host()
    );
    let docker_config = tempfile::tempdir().expect("dir");
    std::fs::write(docker_config.path().join("config.json"), DOCKER_IO_KEYED).expect("write");
    let expected = format!(
        "Docker config {}: {HUB_WARNING}",
        docker_config.path().join("config.json").display()
    );

    let run = |extra: &[&str]| {
        let mut run = ImageSync::new()
            .config(&yaml)
            .env("DOCKER_CONFIG", docker_config.path());
        for arg in extra {
            run = run.arg(arg);
        }
        let outcome = run.run();
        outcome.expect_code(0);
        outcome
    };

    let check = run(&["--check"]);
    assert!(check.stderr.contains(&expected), "{}", check.stderr);
    assert!(
        check
            .stderr
            .contains("Re-key the entry as `https://index.docker.io/v1/`"),
        "{}",
        check.stderr
    );
    assert!(!check.stderr.contains("c3luYy1ib3Q6"), "no secret shown");

    let synced = run(&[]);
    assert_eq!(synced.actions(), ["pulled"]);
    assert!(synced.stderr.contains(&expected), "{}", synced.stderr);

    // The right key: nothing to say.
    std::fs::write(
        docker_config.path().join("config.json"),
        r#"{"auths": {"https://index.docker.io/v1/": {"auth": "c3luYy1ib3Q6czNjcmV0"}}}"#,
    )
    .expect("write");
    let check = run(&["--check"]);
    assert!(
        !check.stderr.contains("Docker Hub credentials"),
        "{}",
        check.stderr
    );
}

/// The ConfigMap the cluster mounts.
const CONFIGMAP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/k8s/clusters/scale-test/infrastructure/image-sync/configmap.yaml"
);

#[test]
fn check_reads_the_config_out_of_the_real_configmap() {
    let outcome = ImageSync::new()
        .arg("--check")
        .arg("--config")
        .arg(CONFIGMAP)
        .run();
    outcome.expect_code(0);
    assert!(
        outcome
            .stderr
            .contains("is valid: 4 image(s) into image-cache.image-cache.svc.cluster.local:5000"),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains("[2] docker.io/library/nginx:1.27-alpine -> image-cache.image-cache.svc.cluster.local:5000/library/nginx:1.27-alpine"),
        "{}",
        outcome.stderr
    );

    // A mis-indented `tag` in the ConfigMap is reported at the file's own line.
    let text = std::fs::read_to_string(CONFIGMAP).expect("read the ConfigMap");
    let line = 1 + text
        .lines()
        .position(|l| l == "        tag: \"0.35.1\"")
        .expect("the first image's tag line");
    let run = ImageSync::new();
    let broken = run.write(
        "configmap.yaml",
        text.replace("        tag: \"0.35.1\"", "       tag: \"0.35.1\"")
            .as_bytes(),
    );
    let outcome = run.arg("--check").arg("--config").arg(&broken).run();
    outcome.expect_code(2);
    assert!(
        outcome.stderr.contains(&format!(
            "{} (ConfigMap `image-sync-config`, key `config.yaml`): did not find expected '-' indicator at line {line} column 8",
            broken.display()
        )),
        "{}",
        outcome.stderr
    );
}

/// Lines the HTTP client's libraries log at debug (connection pool, connector).
const LIBRARY_NOISE: &[&str] = &[
    "idle connection",
    "connecting to",
    "starting new connection",
];

#[test]
fn rust_log_debug_shows_image_sync_and_hides_library_noise() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "debug-log",
        &format!("{up}/team/debug:1"),
        Format::Oci,
    );
    let yaml = format!(
        "cache_registry: \"{}\"\nimages:\n  - {{source: \"{up}/team/debug\", tag: \"1\"}}\n",
        p.cache.host()
    );
    let noisy = |stderr: &str| {
        stderr
            .lines()
            .filter(|line| LIBRARY_NOISE.iter().any(|noise| line.contains(noise)))
            .count()
    };

    let run = ImageSync::new()
        .config(&yaml)
        .env("RUST_LOG", "debug")
        .run();
    run.expect_code(0);
    assert!(run.stderr.contains("spawned child"), "{}", run.stderr);
    assert_eq!(noisy(&run.stderr), 0, "{}", run.stderr);

    // Asked for by name, a library's debug lines are there: the filter above is what hid them.
    let asked = ImageSync::new()
        .config(&yaml)
        .env("RUST_LOG", "debug,hyper_util=debug,reqwest=debug")
        .run();
    asked.expect_code(0);
    assert_eq!(asked.actions(), ["already_cached"]);
    assert!(noisy(&asked.stderr) > 0, "{}", asked.stderr);
}

#[test]
fn the_missing_crane_warning_says_where_it_looked_and_what_it_costs() {
    let Some(p) = pair() else { return };
    let up = p.upstream.host();
    image::push_new(
        &p.tools,
        Kind::Single,
        "no-crane",
        &format!("{up}/team/nocrane:1"),
        Format::Oci,
    );
    let yaml = format!(
        "cache_registry: \"{}\"\nimages:\n  - {{source: \"{up}/team/nocrane\", tag: \"1\"}}\n",
        p.cache.host()
    );
    let run = ImageSync::new().config(&yaml);
    let only_skopeo = bin_with(run.dir(), &[&p.tools.skopeo]);
    let outcome = run.env("PATH", &only_skopeo).run();
    outcome.expect_code(0);
    for fragment in [
        format!("crane is not on PATH (looked in {})", only_skopeo.display()),
        "copies go through skopeo".to_owned(),
        "manifest GETs that spend pull quota".to_owned(),
        "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1".to_owned(),
    ] {
        assert!(
            outcome.stderr.contains(&fragment),
            "missing {fragment:?} in {}",
            outcome.stderr
        );
    }
}

/// `scripts/install-test-tools --demo` (what `scripts/demo` runs first) with a PATH that has
/// only `bash`, `dirname` and, optionally, a fake `go` printing `version`.
fn install_tools_without_a_usable_go(go_version: Option<&str>) -> std::process::Output {
    let dir = tempfile::tempdir().expect("dir");
    let needed: Vec<std::path::PathBuf> = ["bash", "dirname"]
        .iter()
        .map(|tool| crate::support::find_tool(tool).expect("bash and dirname are on PATH"))
        .collect();
    let needed: Vec<&std::path::Path> = needed.iter().map(|p| p.as_path()).collect();
    let bin = bin_with(dir.path(), &needed);
    if let Some(version) = go_version {
        crate::support::write_script(
            &bin.join("go"),
            &format!(
                "#!/bin/sh\ncase \"$1\" in\n  env) echo {version} ;;\n  *) echo \"go version {version} linux/amd64\" ;;\nesac\n"
            ),
        );
    }
    std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/install-test-tools"
    ))
    .arg("--demo")
    .env("PATH", &bin)
    .output()
    .expect("run scripts/install-test-tools")
}

#[test]
fn without_go_the_install_script_says_what_to_install() {
    let output = install_tools_without_a_usable_go(None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for fragment in [
        "install-test-tools: Go is not installed: install Go >= 1.21",
        "https://go.dev/dl/",
        "Debian 12's `apt-get install golang-go` gives Go 1.19, which is too old",
    ] {
        assert!(
            stderr.contains(fragment),
            "missing {fragment:?} in {stderr}"
        );
    }
    assert!(!stderr.contains("command not found"), "{stderr}");

    let output = install_tools_without_a_usable_go(Some("go1.19.8"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "install-test-tools: go version go1.19.8 linux/amd64 is too old: install Go >= 1.21"
        ),
        "{stderr}"
    );
}
