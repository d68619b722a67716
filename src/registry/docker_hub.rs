//! Docker Hub, in one place: the names it goes by (the config's `docker.io`, the API at
//! `registry-1.docker.io`, `index.docker.io`, tokens from `auth.docker.io`, credentials
//! under `https://index.docker.io/v1/`), and the classic credentials mistake caught before
//! the cluster: a Docker config whose Docker Hub entry is keyed `docker.io` (or
//! `registry-1.docker.io`, `index.docker.io`) instead of `https://index.docker.io/v1/`.
//! crane looks Docker Hub up under that exact key only, ignores the others and pulls
//! anonymously, under the much lower anonymous limit, without a word. image-sync warns at
//! `--check` and at the start of a run.

use std::path::Path;

use crate::registry::credentials::{config_path, hostname_of};

/// Docker Hub as configs and references name it (`nginx` means `docker.io/library/nginx`).
pub const HOST: &str = "docker.io";

/// Where Docker Hub's registry API answers (`docker.io` itself does not).
pub const API_HOST: &str = "registry-1.docker.io";

/// The legacy index name: the registry part of Docker Hub's credential keys.
pub const INDEX_HOST: &str = "index.docker.io";

/// Docker Hub's token service (its bearer realm).
pub const AUTH_HOST: &str = "auth.docker.io";

/// The key Docker Hub credentials must have (crane ignores `docker.io`).
pub const CREDENTIALS_KEY: &str = "https://index.docker.io/v1/";

/// Host names that mean Docker Hub in a reference or a config key.
const ALIASES: &[&str] = &[HOST, INDEX_HOST, API_HOST];

/// Whether a reference's host is another name of Docker Hub (normalised to [`HOST`]).
pub fn is_alias(host: &str) -> bool {
    ALIASES.contains(&host)
}

/// Whether `host` is one of the hosts that serve Docker Hub (its API, index or tokens):
/// a tool's error naming any of them is Docker Hub's.
pub fn serves(host: &str) -> bool {
    is_alias(host) || host == AUTH_HOST
}

/// The host a registry's API is reached at: [`API_HOST`] for Docker Hub, else itself.
pub fn api_host(host: &str) -> &str {
    if host == HOST { API_HOST } else { host }
}

/// The registry part of a credential lookup (`index.docker.io` for Docker Hub, as docker
/// writes repository keys) and the registry's own key ([`CREDENTIALS_KEY`] for Docker Hub).
pub fn credential_names(host: &str) -> (&str, &str) {
    if host == HOST {
        (INDEX_HOST, CREDENTIALS_KEY)
    } else {
        (host, host)
    }
}

/// A Docker config larger than this is not read for the warning (it would be a mistake, and
/// crane reports it).
const MAX_DOCKER_CONFIG_BYTES: u64 = 1024 * 1024;

/// The warning, with its fix, for a Docker config (the file's bytes) that has Docker Hub
/// credentials under a key crane ignores and none under `https://index.docker.io/v1/`.
/// `None` when there is nothing to say, also for a file that is not JSON (crane reports
/// that itself).
pub fn warning(bytes: &[u8]) -> Option<String> {
    let config: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let mut misplaced = Vec::new();
    for section in ["auths", "credHelpers"] {
        let Some(entries) = config.get(section).and_then(serde_json::Value::as_object) else {
            continue;
        };
        if entries.contains_key(CREDENTIALS_KEY) {
            return None;
        }
        misplaced.extend(
            entries
                .keys()
                .filter(|key| is_alias(&hostname_of(key).to_ascii_lowercase()))
                .map(|key| format!("`{section}.{}`", crate::input::reference::shorten(key))),
        );
    }
    (!misplaced.is_empty()).then(|| {
        format!(
            "Docker Hub credentials are keyed {}, which crane ignores: Docker Hub pulls go anonymous, under the much lower anonymous limit. Re-key the entry as `{CREDENTIALS_KEY}` (what `docker login` writes), e.g. `jq '.auths[\"{CREDENTIALS_KEY}\"] = .auths[\"docker.io\"] | del(.auths[\"docker.io\"])'`; in a Kubernetes Secret, `kubectl create secret docker-registry --docker-server={CREDENTIALS_KEY} ...`",
            misplaced.join(", ")
        )
    })
}

/// The warning for the Docker config crane would read, naming the file.
pub fn check_docker_config() -> Option<String> {
    let path = config_path()?;
    let text = warning(&read_small(&path)?)?;
    Some(format!("Docker config {}: {text}", path.display()))
}

fn read_small(path: &Path) -> Option<Vec<u8>> {
    let metadata = std::fs::metadata(path).ok()?;
    (metadata.is_file() && metadata.len() <= MAX_DOCKER_CONFIG_BYTES)
        .then(|| std::fs::read(path).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_io_key_without_the_hub_key_is_a_warning_with_the_fix() {
        let text = warning(br#"{"auths": {"docker.io": {"auth": "Ym90OnMzY3JldA=="}}}"#)
            .expect("a warning");
        assert!(
            text.starts_with("Docker Hub credentials are keyed `auths.docker.io`, which crane ignores: Docker Hub pulls go anonymous"),
            "{text}"
        );
        assert!(
            text.contains("Re-key the entry as `https://index.docker.io/v1/`"),
            "{text}"
        );
        assert!(!text.contains("Ym90"), "never echoes a secret: {text}");
    }

    #[test]
    fn every_spelling_of_docker_hub_counts() {
        for key in [
            "docker.io",
            "https://docker.io",
            "registry-1.docker.io",
            "https://registry-1.docker.io/v2/",
            "index.docker.io",
            "Docker.IO",
        ] {
            let config = format!(r#"{{"auths": {{"{key}": {{}}}}}}"#);
            assert!(warning(config.as_bytes()).is_some(), "{key}");
        }
        let helper = warning(br#"{"credHelpers": {"docker.io": "pass"}}"#).expect("warns");
        assert!(helper.contains("`credHelpers.docker.io`"), "{helper}");
    }

    #[test]
    fn a_right_key_other_registries_or_no_json_say_nothing() {
        for config in [
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "eA=="}}}"#,
            r#"{"auths": {"https://index.docker.io/v1/": {}, "docker.io": {}}}"#,
            r#"{"auths": {"ghcr.io": {}, "cache:5000": {}, "mydocker.io": {}}}"#,
            r#"{"auths": {}}"#,
            r#"{}"#,
            "not json",
            r#"{"auths": "oops"}"#,
        ] {
            assert_eq!(warning(config.as_bytes()), None, "{config}");
        }
    }
}
