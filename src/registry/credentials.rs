//! Registry credentials, found once, the way crane (go-containerregistry v0.22.1's
//! `DefaultKeychain`) finds them, and shared by image-sync's own requests, crane and
//! skopeo.
//!
//! Which file: `~/.docker/config.json` or `$DOCKER_CONFIG/config.json` when either exists
//! (then the one in `$DOCKER_CONFIG` if set, else `~/.docker`), else `$REGISTRY_AUTH_FILE`,
//! else `$XDG_RUNTIME_DIR/containers/auth.json`, else `$XDG_CONFIG_HOME` (or
//! `~/.config`)`/containers/auth.json`. Which entry: the key `host/repository` first, then
//! the registry (`https://index.docker.io/v1/` for Docker Hub, never `docker.io`); a
//! `credHelpers` entry or `credsStore` runs `docker-credential-NAME get`; in the file, an
//! exact key wins, else a key whose host name matches; `auth` (base64 `user:password`)
//! wins over separate `username`/`password` fields.
//!
//! Credential helpers run once per (helper, key) per run, each in a task of its own (bounded
//! by 20 s), so that helpers for different keys run in parallel and no lock is held while
//! one runs; every lookup waits for the answer only until its own deadline, and a timeout
//! names the helper.
//!
//! Identity tokens (OAuth2 refresh tokens) are left to crane ([`Lookup::Delegate`]).
//! Credentials are never logged or formatted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use super::docker_hub;
use super::failure::{Class, Failure, Side};
use super::private_config::PrivateConfig;
use crate::process::{self, CommandSpec, RunError};

/// Bound on one credential helper run (it goes on for later lookups after the lookup that
/// started it gave up at its own deadline).
const HELPER_TIMEOUT: Duration = Duration::from_secs(20);

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

/// What the credentials say about one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No credentials: anonymous.
    Anonymous,
    /// A user name and password.
    Basic(Basic),
    /// An identity token, or a config crane would refuse: let crane do it.
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

#[derive(Default, Deserialize, Clone)]
struct RawAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// The credentials file crane reads, by crane's search order; `None`: anonymous.
pub fn config_path() -> Option<PathBuf> {
    config_path_in(&|name| std::env::var_os(name).filter(|value| !value.is_empty()))
}

fn config_path_in(env: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let home = env("HOME").map(PathBuf::from);
    let docker_dir = env("DOCKER_CONFIG").map(PathBuf::from);
    let home_config = home.as_ref().map(|h| h.join(".docker/config.json"));
    let found_docker = home_config.as_deref().is_some_and(Path::is_file)
        || docker_dir
            .as_ref()
            .is_some_and(|dir| dir.join("config.json").is_file());
    if found_docker {
        // docker's config.Load: `$DOCKER_CONFIG` when set, else `~/.docker`.
        return match docker_dir {
            Some(dir) => Some(dir.join("config.json")),
            None => home_config,
        };
    }
    if let Some(file) = env("REGISTRY_AUTH_FILE").map(PathBuf::from)
        && file.is_file()
    {
        return Some(file);
    }
    let runtime = env("XDG_RUNTIME_DIR").map(|dir| PathBuf::from(dir).join("containers/auth.json"));
    if let Some(file) = runtime.filter(|file| file.is_file()) {
        return Some(file);
    }
    let config_home = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(".config")));
    config_home
        .map(|dir| dir.join("containers/auth.json"))
        .filter(|file| file.is_file())
}

/// How one key resolves in the file.
enum Source<'a> {
    /// `credHelpers[key]` or `credsStore`: ask `docker-credential-NAME`.
    Helper(&'a str),
    /// An `auths` entry (possibly empty).
    Entry(Option<&'a RawAuth>),
}

/// The credentials of one run.
#[derive(Default)]
pub struct Keyring {
    /// The file they came from.
    path: Option<PathBuf>,
    /// The file as JSON (for a private copy with extra keys), when it parsed.
    document: Option<serde_json::Value>,
    config: RawConfig,
    /// The file exists but crane would refuse it (not JSON, a bad `auth`).
    unreadable: bool,
    /// The file ends before its JSON does (a truncated write): why, without its content.
    truncated: Option<String>,
    /// Credential helper answers by (helper, server key): each helper runs once per key per
    /// run, in a task of its own; lookups wait on the channel.
    helper_answers: Mutex<HashMap<(String, String), HelperAnswer>>,
}

/// A credential helper's answer once it came: credentials, nothing (`None`: anonymous), or
/// a failure naming the helper.
type Answered = Result<Option<RawAuth>, Failure>;

/// A credential helper run that may still be going on.
type HelperAnswer = tokio::sync::watch::Receiver<Option<Answered>>;

impl Keyring {
    /// The credentials crane would find in this environment.
    pub fn discover() -> Self {
        Self::load(config_path())
    }

    /// Reads a config file; a missing one means anonymous everywhere.
    pub fn load(path: Option<PathBuf>) -> Self {
        let Some(path) = path else {
            return Self::default();
        };
        let bytes = std::fs::read(&path).unwrap_or_default();
        let mut keyring = Self::parse(&bytes);
        keyring.path = Some(path);
        keyring
    }

    /// Parses config bytes.
    pub fn parse(bytes: &[u8]) -> Self {
        let document: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
        let parsed: Result<RawConfig, serde_json::Error> = serde_json::from_slice(bytes);
        // Only an early end (an empty file is no config, as for docker): other syntax
        // (trailing data, say) may still be Go's JSON.
        let truncated = parsed
            .as_ref()
            .err()
            .filter(|err| err.is_eof() && !bytes.iter().all(u8::is_ascii_whitespace))
            .map(ToString::to_string);
        let config = parsed.ok();
        let unreadable = config.is_none()
            || config.as_ref().is_some_and(|config| {
                config.auths.values().any(|entry| {
                    entry
                        .auth
                        .as_deref()
                        .is_some_and(|auth| decode_auth(auth).is_none())
                })
            });
        Self {
            path: None,
            document,
            config: config.unwrap_or_default(),
            unreadable,
            truncated,
            helper_answers: Mutex::new(HashMap::new()),
        }
    }

    /// The file, for skopeo's `--authfile`.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The credentials for `repository` on `host`, as crane would find them, by
    /// `deadline` (a credential helper that has not answered by then is a failure naming
    /// it).
    pub async fn lookup(
        &self,
        host: &str,
        repository: &str,
        deadline: Instant,
    ) -> Result<Lookup, Failure> {
        self.lookup_keys(host, Some(repository), deadline).await
    }

    /// The credentials for a registry as a whole (its registry key only), as crane finds
    /// them for a reference on it that no repository key matches.
    pub async fn lookup_registry(&self, host: &str, deadline: Instant) -> Result<Lookup, Failure> {
        self.lookup_keys(host, None, deadline).await
    }

    async fn lookup_keys(
        &self,
        host: &str,
        repository: Option<&str>,
        deadline: Instant,
    ) -> Result<Lookup, Failure> {
        if let Some(reason) = &self.truncated {
            // crane says `unexpected EOF`, which reads like a broken connection: it is not.
            return Err(Failure::new(
                Class::Local,
                format!(
                    "the Docker config {} is truncated ({reason}): no credentials can be read from it",
                    self.path
                        .as_deref()
                        .map_or_else(|| "file".to_owned(), |path| path.display().to_string())
                ),
            )
            .on(Side::Local, None));
        }
        if self.unreadable {
            return Ok(Lookup::Delegate);
        }
        let (registry, registry_key) = docker_hub::credential_names(host);
        let repository_key = repository.map(|repository| format!("{registry}/{repository}"));
        for key in repository_key.into_iter().chain([registry_key.to_owned()]) {
            let entry = match self.source(&key) {
                Source::Helper(helper) => self.ask_helper(helper, &key, deadline).await?,
                Source::Entry(entry) => entry.cloned(),
            };
            if let Some(lookup) = entry.as_ref().and_then(to_lookup) {
                return Ok(lookup);
            }
        }
        Ok(Lookup::Anonymous)
    }

    fn source(&self, key: &str) -> Source<'_> {
        // An empty helper name (`"credHelpers": {"host": ""}`) means the file, as in docker.
        if let Some(helper) = self
            .config
            .cred_helpers
            .get(key)
            .or(self.config.creds_store.as_ref())
            .filter(|helper| !helper.is_empty())
        {
            return Source::Helper(helper);
        }
        let auths = &self.config.auths;
        Source::Entry(auths.get(key).or_else(|| {
            auths
                .iter()
                .find(|(stored, _)| hostname_of(stored) == key)
                .map(|(_, entry)| entry)
        }))
    }

    /// The answer of `docker-credential-HELPER get` for the server key: the helper runs
    /// once per key per run, in a task of its own (so that no lock is held while it runs and
    /// helpers for other keys run in parallel); this lookup waits for it until `deadline`.
    async fn ask_helper(
        &self,
        helper: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<RawAuth>, Failure> {
        let mut answer = {
            let mut answers = self
                .helper_answers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            answers
                .entry((helper.to_owned(), key.to_owned()))
                .or_insert_with(|| {
                    let (send, receive) = tokio::sync::watch::channel(None);
                    let (helper, key) = (helper.to_owned(), key.to_owned());
                    tokio::spawn(async move {
                        let answered = run_helper(&helper, &key).await;
                        let _ = send.send(Some(answered));
                    });
                    receive
                })
                .clone()
        };
        let waited =
            tokio::time::timeout_at(deadline.into(), answer.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(answered)) => answered.clone().unwrap_or(Ok(None)),
            Ok(Err(_)) => Err(helper_failure(
                helper,
                key,
                "stopped without an answer",
            )),
            Err(_) => Err(Failure::new(
                Class::TimedOut,
                format!(
                    "credential helper docker-credential-{helper} gave no answer for `{}` within this step's deadline (it goes on, at most {} s, for later steps)",
                    crate::input::reference::shorten(key),
                    HELPER_TIMEOUT.as_secs()
                ),
            )
            .on(Side::Local, None)),
        }
    }

    /// Writes a private copy of the credentials in which `alias` (the IP literal a copy
    /// reaches the cache by) has the cache's credentials: `DIR/config.json`, mode 0600, in
    /// a fresh per-run directory under `$TMPDIR` (mode 0700), removed when the returned
    /// guard drops (and, after a SIGKILL, by the next run: see [`PrivateConfig`]).
    pub fn private_config_with_alias(
        &self,
        alias: &str,
        credentials: &Basic,
    ) -> std::io::Result<PrivateConfig> {
        let mut document = self
            .document
            .clone()
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", credentials.username, credentials.password));
        if let Some(object) = document.as_object_mut() {
            let auths = object
                .entry("auths")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(auths) = auths.as_object_mut() {
                auths.insert(alias.to_owned(), serde_json::json!({ "auth": encoded }));
            }
            // A helper for the literal would answer "not found" and hide the entry.
            if let Some(helpers) = object
                .get_mut("credHelpers")
                .and_then(|h| h.as_object_mut())
            {
                helpers.remove(alias);
            }
            if object.contains_key("credsStore") {
                let helpers = object
                    .entry("credHelpers")
                    .or_insert_with(|| serde_json::json!({}));
                if let Some(helpers) = helpers.as_object_mut() {
                    // docker consults credsStore for every key without a credHelpers
                    // entry; an empty helper name means "the file" for this key.
                    helpers.insert(alias.to_owned(), serde_json::json!(""));
                }
            }
        }
        PrivateConfig::write(&std::env::temp_dir(), document.to_string().as_bytes())
    }
}

/// An entry's credentials, or `None` when it holds none.
fn to_lookup(entry: &RawAuth) -> Option<Lookup> {
    let token = |value: &Option<String>| value.as_deref().is_some_and(|t| !t.is_empty());
    if token(&entry.identitytoken) || token(&entry.registrytoken) {
        return Some(Lookup::Delegate);
    }
    // docker's config loader decodes `auth` over the separate fields.
    let (username, password) = match entry.auth.as_deref().filter(|a| !a.is_empty()) {
        Some(auth) => decode_auth(auth)?,
        None => (
            entry.username.clone()?,
            entry.password.clone().unwrap_or_default(),
        ),
    };
    if username.is_empty() {
        return None;
    }
    Some(Lookup::Basic(Basic { username, password }))
}

fn decode_auth(auth: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    (!username.is_empty()).then(|| {
        (
            username.to_owned(),
            password.trim_end_matches('\0').to_owned(),
        )
    })
}

/// A credential helper that did not answer, as a failure of this machine naming it.
fn helper_failure(helper: &str, key: &str, what: &str) -> Failure {
    Failure::new(
        Class::Local,
        format!(
            "credential helper docker-credential-{helper} {what} for `{}`",
            crate::input::reference::shorten(key)
        ),
    )
    .on(Side::Local, None)
}

/// The credential helper protocol: `docker-credential-NAME get`, server on stdin, JSON
/// `{"Username": ..., "Secret": ...}` on stdout. `Ok(None)` when it has nothing (or is not
/// installed, or fails: crane then goes anonymous too, or fails the same way); a helper
/// that runs past [`HELPER_TIMEOUT`] is a failure naming it.
async fn run_helper(helper: &str, key: &str) -> Answered {
    let Some(program) = super::find_on_path(&format!("docker-credential-{helper}")) else {
        return Ok(None);
    };
    let spec = CommandSpec {
        program,
        args: vec!["get".to_owned()],
        env: Vec::new(),
        stdin: Some(key.as_bytes().to_vec()),
        timeout: HELPER_TIMEOUT,
    };
    let (_never, cancel) = tokio::sync::watch::channel(false);
    let finished = match process::run(&spec, &cancel).await {
        Ok(finished) => finished,
        Err(RunError::TimedOut(_)) => {
            return Err(Failure::timed_out(
                HELPER_TIMEOUT,
                format!(
                    "credential helper docker-credential-{helper} for `{}`",
                    crate::input::reference::shorten(key)
                ),
            )
            .on(Side::Local, None));
        }
        Err(_) => return Ok(None),
    };
    if !finished.success() {
        tracing::debug!(
            helper,
            "credential helper has no credentials for this registry"
        );
        return Ok(None);
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(&finished.stdout) else {
        return Ok(None);
    };
    Ok(Some(if answer.username == "<token>" {
        RawAuth {
            identitytoken: Some(answer.secret),
            ..RawAuth::default()
        }
    } else {
        RawAuth {
            username: Some(answer.username),
            password: Some(answer.secret),
            ..RawAuth::default()
        }
    }))
}

/// docker's `ConvertToHostname`: `https://host:5000/v1/` -> `host:5000`.
pub fn hostname_of(key: &str) -> &str {
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

    fn encode(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    fn lookup(keyring: &Keyring, host: &str, repository: &str) -> Lookup {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(keyring.lookup(host, repository, Instant::now() + Duration::from_secs(5)))
            .expect("no helper fails")
    }

    #[test]
    fn lookups_follow_crane() {
        let auth = encode("bot:s3cret");
        let keyring = Keyring::parse(
            format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}}, "https://ghcr.io": {{"username": "u", "password": "p"}}, "docker.io": {{"auth": "{}"}}, "cache:5000": {{"auth": "{auth}"}}, "cache:5000/team/special": {{"username": "special", "password": "x"}}}}}}"#,
                encode("other:pw")
            )
            .as_bytes(),
        );
        assert_eq!(
            lookup(&keyring, "docker.io", "library/nginx"),
            basic("bot", "s3cret")
        );
        assert_eq!(lookup(&keyring, "ghcr.io", "a/b"), basic("u", "p"));
        assert_eq!(
            lookup(&keyring, "cache:5000", "team/app"),
            basic("bot", "s3cret")
        );
        assert_eq!(
            lookup(&keyring, "cache:5000", "team/special"),
            basic("special", "x"),
            "the repository key comes first"
        );
        assert_eq!(lookup(&keyring, "quay.io", "a"), Lookup::Anonymous);
    }

    #[test]
    fn auth_wins_over_separate_fields() {
        let keyring = Keyring::parse(
            format!(
                r#"{{"auths": {{"reg:5000": {{"auth": "{}", "username": "field-user", "password": "field-pass"}}}}}}"#,
                encode("auth-user:auth-pass")
            )
            .as_bytes(),
        );
        assert_eq!(
            lookup(&keyring, "reg:5000", "a"),
            basic("auth-user", "auth-pass")
        );
    }

    #[test]
    fn a_docker_io_key_does_not_count_for_docker_hub() {
        let keyring = Keyring::parse(
            format!(
                r#"{{"auths": {{"docker.io": {{"auth": "{}"}}}}}}"#,
                encode("bot:s3cret")
            )
            .as_bytes(),
        );
        assert_eq!(
            lookup(&keyring, "docker.io", "library/nginx"),
            Lookup::Anonymous
        );
    }

    #[test]
    fn identity_tokens_and_unreadable_files_are_left_to_crane_and_missing_helpers_are_anonymous() {
        let identity = Keyring::parse(br#"{"auths": {"ghcr.io": {"identitytoken": "x"}}}"#);
        assert_eq!(lookup(&identity, "ghcr.io", "a"), Lookup::Delegate);
        assert_eq!(
            lookup(&Keyring::parse(b"not json"), "ghcr.io", "a"),
            Lookup::Delegate
        );
        let bad_auth = Keyring::parse(br#"{"auths": {"ghcr.io": {"auth": "%%%"}}}"#);
        assert_eq!(lookup(&bad_auth, "ghcr.io", "a"), Lookup::Delegate);
        assert_eq!(
            lookup(&Keyring::load(None), "ghcr.io", "a"),
            Lookup::Anonymous
        );
        let helper = Keyring::parse(
            br#"{"credHelpers": {"reg.example": "image-sync-test-no-such-helper"}}"#,
        );
        assert_eq!(lookup(&helper, "reg.example", "a"), Lookup::Anonymous);
    }

    #[test]
    fn a_truncated_config_is_a_local_failure_not_a_broken_connection() {
        let truncated = Keyring::parse(br#"{"auths": {"ghcr.io": {"auth": "dTp"#);
        let failure = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(truncated.lookup("ghcr.io", "a", Instant::now() + Duration::from_secs(5)))
            .expect_err("truncated");
        assert_eq!(failure.class, Class::Local);
        assert_eq!(failure.side, Some(Side::Local));
        assert!(failure.to_string().contains("is truncated"), "{failure}");
        assert!(!failure.to_string().contains("dTp"), "{failure}");
        // Empty (or blank) is no config at all, as for docker.
        for empty in [&b""[..], b"  \n"] {
            assert_eq!(
                lookup(&Keyring::parse(empty), "ghcr.io", "a"),
                Lookup::Delegate
            );
        }
    }

    #[test]
    fn the_search_order_is_cranes() {
        let dir = tempfile::tempdir().expect("dir");
        let make = |relative: &str| {
            let path = dir.path().join(relative);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, "{}").expect("write");
            path
        };
        let env_of = |pairs: Vec<(&'static str, PathBuf)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.clone().into_os_string())
            }
        };
        let home = dir.path().join("home");
        let podman = make("run/containers/auth.json");
        let registry_auth = make("registry-auth.json");
        let env = env_of(vec![
            ("HOME", home.clone()),
            ("REGISTRY_AUTH_FILE", registry_auth.clone()),
            ("XDG_RUNTIME_DIR", dir.path().join("run")),
        ]);
        assert_eq!(config_path_in(&env), Some(registry_auth.clone()));
        let env = env_of(vec![
            ("HOME", home.clone()),
            ("XDG_RUNTIME_DIR", dir.path().join("run")),
        ]);
        assert_eq!(config_path_in(&env), Some(podman));
        let docker_dir = dir.path().join("docker");
        make("docker/config.json");
        let env = env_of(vec![
            ("HOME", home.clone()),
            ("DOCKER_CONFIG", docker_dir.clone()),
            ("REGISTRY_AUTH_FILE", registry_auth),
        ]);
        assert_eq!(config_path_in(&env), Some(docker_dir.join("config.json")));
        make("home/.docker/config.json");
        let env = env_of(vec![("HOME", home.clone())]);
        assert_eq!(config_path_in(&env), Some(home.join(".docker/config.json")));
    }

    #[test]
    fn a_private_copy_gives_the_alias_the_cache_credentials_and_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let keyring =
            Keyring::parse(br#"{"auths": {"ghcr.io": {"auth": "dTpw"}}, "credsStore": "desktop"}"#);
        let credentials = Basic {
            username: "cache-user".into(),
            password: "cache-pass".into(),
        };
        let dir = keyring
            .private_config_with_alias("10.0.0.7:5000", &credentials)
            .expect("written");
        let path = dir.path().join("config.json");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let copy = Keyring::load(Some(path.clone()));
        assert_eq!(
            lookup(&copy, "10.0.0.7:5000", "a"),
            basic("cache-user", "cache-pass")
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.contains("ghcr.io") && text.contains("desktop"),
            "{text}"
        );
        let kept = dir.path().to_owned();
        drop(dir);
        assert!(!kept.exists(), "removed with the guard");
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let text = format!("{:?}", basic("bot", "s3cret"));
        assert!(!text.contains("s3cret") && !text.contains("bot"), "{text}");
    }
}
