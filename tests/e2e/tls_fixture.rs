//! The HTTPS registry fixture (support/tls_registry.rs) works: crane trusts it exactly when
//! `SSL_CERT_FILE` names the test CA, and image-sync reports an untrusted certificate as
//! such.

use std::process::{Command, Output, Stdio};

use crate::support::image::{self, Format, Kind};
use crate::support::registry::Registry;
use crate::support::runner::ImageSync;
use crate::support::tls_registry::TlsRegistry;
use crate::support::{Tools, tools};

fn crane_digest(tools: &Tools, reference: &str, ca: Option<&std::path::Path>) -> Output {
    let mut command = Command::new(&tools.crane);
    command
        .args(["digest", reference])
        .stdin(Stdio::null())
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    if let Some(ca) = ca {
        command.env("SSL_CERT_FILE", ca);
    }
    command.output().expect("run crane")
}

#[test]
fn crane_trusts_the_tls_registry_only_with_the_test_ca() {
    let Some(tools) = tools() else { return };
    let Some(tls) = TlsRegistry::start(&tools) else {
        return;
    };
    assert_eq!(tls.host(), format!("{}:{}", tls.name(), tls.port()));
    let reference = format!("{}/demo/secure:1.0", tls.host());
    tls.push_trusted(&tools, Kind::MultiArch, "tls-fixture", &reference);

    let trusted = crane_digest(&tools, &reference, Some(&tls.ca_cert_path()));
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let digest = String::from_utf8_lossy(&trusted.stdout).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");

    let untrusted = crane_digest(&tools, &reference, None);
    assert!(!untrusted.status.success(), "no CA, no trust");
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("x509"), "{stderr}");
    assert!(
        !stderr.contains("http://"),
        "crane must not fall back to plain HTTP for {}: {stderr}",
        tls.name()
    );

    // The access log is read like the plain registry's: HEADs over TLS were logged.
    let counts = tls.counts();
    assert!(counts.manifest_heads >= 1, "{}", tls.access_log());
    assert!(counts.writes >= 1, "{}", tls.access_log());

    // Seeding without verification works too (what support::image::OciLayout::push does).
    let unverified = format!("{}/demo/unverified:1.0", tls.host());
    image::push_new(
        &tools,
        Kind::Single,
        "tls-unverified",
        &unverified,
        Format::Oci,
    );
    let output = crane_digest(&tools, &unverified, Some(&tls.ca_cert_path()));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn image_sync_copies_from_a_tls_upstream_it_trusts_and_names_one_it_does_not() {
    let Some(tools) = tools() else { return };
    let Some(tls) = TlsRegistry::start(&tools) else {
        return;
    };
    let cache = Registry::start(&tools);
    let source = format!("{}/team/secure", tls.host());
    tls.push_trusted(
        &tools,
        Kind::MultiArch,
        "tls-image-sync",
        &format!("{source}:1.0"),
    );
    let upstream_digest = crane_digest(&tools, &format!("{source}:1.0"), Some(&tls.ca_cert_path()));
    let upstream_digest = String::from_utf8_lossy(&upstream_digest.stdout)
        .trim()
        .to_owned();
    let config = format!(
        "cache_registry: \"{}\"\nimages:\n  - source: \"{source}\"\n    tag: \"1.0\"\nsettings:\n  concurrency: 1\n  pull_timeout_secs: 60\n  check_timeout_secs: 20\n",
        cache.host()
    );

    // Not trusted: the image fails with the documented cause, nothing is copied.
    let outcome = ImageSync::new()
        .config(&config)
        .env("SSL_CERT_FILE", "/nonexistent/ca.pem")
        .env("SSL_CERT_DIR", "/nonexistent")
        .run();
    outcome.expect_code(1);
    let error = outcome.result(0)["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("TLS certificate not trusted"),
        "{error}\nstderr:\n{}",
        outcome.stderr
    );
    assert_eq!(
        image::digest_of(&tools, &format!("{}/team/secure:1.0", cache.host())),
        None
    );

    // Trusted through SSL_CERT_FILE: crane (and skopeo) verify against the test CA.
    let outcome = ImageSync::new()
        .config(&config)
        .env("SSL_CERT_FILE", tls.ca_cert_path())
        .run();
    outcome.expect_code(0);
    assert_eq!(outcome.actions(), ["pulled"], "{}", outcome.stderr);
    assert_eq!(
        outcome.result(0)["remote_digest"].as_str(),
        Some(upstream_digest.as_str())
    );
    assert_eq!(
        image::digest_of(&tools, &format!("{}/team/secure:1.0", cache.host())),
        Some(upstream_digest)
    );
}
