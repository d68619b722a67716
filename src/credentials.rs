//! Registry credentials from the Docker config file crane reads
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), looked up the way crane
//! looks them up, for image-sync's own digest checks.
//!
//! Anything this module does not handle itself (credential helpers, a credential store,
//! identity tokens) makes it answer [`Lookup::Delegate`]: that registry's checks go to
//! crane, which supports them all. Credentials are never logged or formatted.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;

/// The key Docker Hub credentials must have (crane ignores `docker.io`).
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// A user name and password (or token) for basic auth and token requests.
#[derive(Clone, PartialEq, Eq)]
pub struct Basic {
    /// The user name.
    pub username: String,
    /// The password or personal access token.
    pub password: String,
}

impl std::fmt::Debug for Basic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Basic { <redacted> }")
    }
}

/// What the config says about one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No credentials: anonymous.
    Anonymous,
    /// A user name and password.
    Basic(Basic),
    /// A credential helper, store or identity token: let crane do it.
    Delegate,
}

// No Debug on anything holding secrets: nothing can print them by accident.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    auths: HashMap<String, RawAuth>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Default, Deserialize)]
struct RawAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The credentials of one config file.
#[derive(Default)]
pub struct Credentials {
    config: RawConfig,
    unreadable: bool,
}

impl Credentials {
    /// Reads the config file; a missing file means anonymous everywhere. A file that
    /// cannot be parsed delegates everything to crane, which reports it properly.
    pub fn load(path: Option<&Path>) -> Self {
        let Some(path) = path else {
            return Self::default();
        };
        match std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        {
            Some(config) => Self {
                config,
                unreadable: false,
            },
            None => Self {
                config: RawConfig::default(),
                unreadable: true,
            },
        }
    }

    /// Parses config bytes (tests).
    pub fn parse(bytes: &[u8]) -> Self {
        match serde_json::from_slice(bytes) {
            Ok(config) => Self {
                config,
                unreadable: false,
            },
            Err(_) => Self {
                config: RawConfig::default(),
                unreadable: true,
            },
        }
    }

    /// The credentials for a registry host, as crane would find them.
    pub fn lookup(&self, host: &str) -> Lookup {
        if self.unreadable || self.config.creds_store.is_some() {
            return Lookup::Delegate;
        }
        let key = if host == crate::reference::DOCKER_HUB {
            DOCKER_HUB_KEY
        } else {
            host
        };
        if self
            .config
            .cred_helpers
            .keys()
            .any(|k| k == key || k == host)
        {
            return Lookup::Delegate;
        }
        let entry = self.config.auths.get(key).or_else(|| {
            // docker's own fallback: a key with a scheme or path matches its host name
            // (never for Docker Hub, whose key must be exact).
            (key != DOCKER_HUB_KEY)
                .then(|| {
                    self.config
                        .auths
                        .iter()
                        .find(|(k, _)| hostname_of(k) == host)
                        .map(|(_, v)| v)
                })
                .flatten()
        });
        let Some(entry) = entry else {
            return Lookup::Anonymous;
        };
        if entry
            .identitytoken
            .as_deref()
            .is_some_and(|t| !t.is_empty())
        {
            return Lookup::Delegate;
        }
        if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
            return Lookup::Basic(Basic {
                username: username.clone(),
                password: password.clone(),
            });
        }
        let decoded = entry
            .auth
            .as_deref()
            .and_then(|auth| {
                base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
            })
            .and_then(|bytes| String::from_utf8(bytes).ok());
        match decoded.as_deref().and_then(|text| text.split_once(':')) {
            Some((username, password)) => Lookup::Basic(Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            }),
            None if entry.auth.as_deref().is_some_and(|a| !a.is_empty()) => Lookup::Delegate,
            None => Lookup::Anonymous,
        }
    }
}

/// `https://host:5000/v1/` -> `host:5000`.
fn hostname_of(key: &str) -> &str {
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    without_scheme.split('/').next().unwrap_or(without_scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> Lookup {
        Lookup::Basic(Basic {
            username: user.into(),
            password: password.into(),
        })
    }

    #[test]
    fn lookups_follow_crane() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bot:s3cret");
        let credentials = Credentials::parse(
            format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}}, "https://ghcr.io": {{"username": "u", "password": "p"}}, "docker.io": {{"auth": "{auth}"}}, "cache:5000": {{"auth": "{auth}"}}}}}}"#
            )
            .as_bytes(),
        );
        assert_eq!(credentials.lookup("docker.io"), basic("bot", "s3cret"));
        assert_eq!(credentials.lookup("ghcr.io"), basic("u", "p"));
        assert_eq!(credentials.lookup("cache:5000"), basic("bot", "s3cret"));
        assert_eq!(credentials.lookup("quay.io"), Lookup::Anonymous);
    }

    #[test]
    fn a_docker_io_key_does_not_count_for_docker_hub() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bot:s3cret");
        let credentials = Credentials::parse(
            format!(r#"{{"auths": {{"docker.io": {{"auth": "{auth}"}}}}}}"#).as_bytes(),
        );
        assert_eq!(credentials.lookup("docker.io"), Lookup::Anonymous);
    }

    #[test]
    fn helpers_stores_and_oddities_are_left_to_crane() {
        assert_eq!(
            Credentials::parse(br#"{"credsStore": "desktop"}"#).lookup("ghcr.io"),
            Lookup::Delegate
        );
        let helpers = Credentials::parse(
            br#"{"credHelpers": {"123.dkr.ecr.us-east-1.amazonaws.com": "ecr-login"}}"#,
        );
        assert_eq!(
            helpers.lookup("123.dkr.ecr.us-east-1.amazonaws.com"),
            Lookup::Delegate
        );
        assert_eq!(helpers.lookup("ghcr.io"), Lookup::Anonymous);
        let identity = Credentials::parse(br#"{"auths": {"ghcr.io": {"identitytoken": "x"}}}"#);
        assert_eq!(identity.lookup("ghcr.io"), Lookup::Delegate);
        assert_eq!(
            Credentials::parse(b"not json").lookup("ghcr.io"),
            Lookup::Delegate
        );
        assert_eq!(Credentials::load(None).lookup("ghcr.io"), Lookup::Anonymous);
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let text = format!("{:?}", basic("bot", "s3cret"));
        assert!(!text.contains("s3cret") && !text.contains("bot"), "{text}");
    }
}
