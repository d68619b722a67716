//! The node side of the cache: containerd `hosts.toml` mirror files for every upstream
//! registry of a plan (`image-sync hosts-toml`), so that nodes pull what image-sync cached.
//!
//! Generation is pure ([`hosts_files`]); [`write`] only puts the files in place. What the
//! files say was checked against a real containerd 1.6 (`tests/e2e/nodes.rs`):
//! - a mirror is a `[host."http://ADDR:PORT"]` entry with `capabilities = ["pull",
//!   "resolve"]`; containerd asks it for `/v2/<upstream path>/manifests/<ref>?ns=<host>`;
//! - a cache path prefix (`cache_registry: cache:5000/mirror`) goes into the host URL as
//!   `/v2/mirror` with `override_path = true`, so the mirror is asked for
//!   `/v2/mirror/<upstream path>/...`;
//! - fail-open (the default) keeps the upstream as `server`: on a 404, a 5xx or a network
//!   error from the cache, the node pulls from the upstream with its own quota;
//! - fail-closed makes the cache the `server` too. containerd 1.6 ignores a file whose
//!   only entry is `server`, so the cache also stays a `[host]` entry.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::input::plan::Plan;
use crate::input::reference::{self, DOCKER_HUB};

/// What a node does when the cache cannot serve an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Pull from the upstream registry (spends the node's own quota).
    Open,
    /// Fail the pull: the cache is the only registry the node asks.
    Closed,
}

/// The cache as nodes reach it: `http[s]://ADDR[:PORT]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    scheme: &'static str,
    host: String,
}

/// Why a `--mirror` value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorError {
    /// Not `http://` or `https://`.
    Scheme(String),
    /// The address part is not a valid `host[:port]`.
    Host(String),
    /// A path, query, fragment or credentials after the address.
    Extra(String),
    /// A cluster DNS name, which nodes cannot resolve.
    ClusterDns(String),
}

impl fmt::Display for MirrorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scheme(value) => write!(
                f,
                "`{value}` must start with http:// (a plain-HTTP cache such as Zot in the cluster) or https://"
            ),
            Self::Host(value) => write!(f, "`{value}` is not a valid address[:port]"),
            Self::Extra(value) => write!(
                f,
                "`{value}` must be only scheme://address[:port]; a cache path prefix comes from `cache_registry`"
            ),
            Self::ClusterDns(value) => write!(
                f,
                "`{value}` is a cluster DNS name, which nodes do not resolve; use the Service's ClusterIP (kubectl -n image-cache get svc image-cache -o jsonpath='{{.spec.clusterIP}}') or a node address"
            ),
        }
    }
}

impl std::error::Error for MirrorError {}

impl Mirror {
    /// Parses `http://ADDR[:PORT]` (a trailing `/` is allowed).
    pub fn parse(raw: &str) -> Result<Self, MirrorError> {
        let shown = reference::shorten(raw);
        let (scheme, rest) = if let Some(rest) = raw.strip_prefix("http://") {
            ("http", rest)
        } else if let Some(rest) = raw.strip_prefix("https://") {
            ("https", rest)
        } else {
            return Err(MirrorError::Scheme(shown));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(MirrorError::Extra(shown));
        }
        let host = reference::parse_host(rest).map_err(|_| MirrorError::Host(shown.clone()))?;
        let (name, _) = reference::split_port(&host);
        if name.ends_with(".svc") || name.contains(".svc.") || name.ends_with(".cluster.local") {
            return Err(MirrorError::ClusterDns(shown));
        }
        Ok(Self { scheme, host })
    }

    /// `ADDR[:PORT]`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `scheme://ADDR[:PORT]`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }
}

/// One `hosts.toml`: the directory name under `--dir` (the registry host as containerd
/// looks it up) and the file's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    /// The registry host the file configures (`docker.io`, `ghcr.io`, `10.96.0.15:5000`).
    pub registry: String,
    /// The file's content.
    pub text: String,
}

/// The cache path prefix of a `cache_registry` (`cache:5000/mirror` -> `mirror`).
pub fn cache_prefix(cache_registry: &str) -> Option<&str> {
    cache_registry
        .split_once('/')
        .map(|(_, prefix)| prefix)
        .filter(|prefix| !prefix.is_empty())
}

/// The `hosts.toml` files for a plan: one per upstream registry, so that a node pulls each
/// image by its upstream name from the cache, and one for the cache's own address, so
/// that images with a distinct `cache_as` can be pulled by the cache's name over plain
/// HTTP.
pub fn hosts_files(plan: &Plan, mirror: &Mirror, fallback: Fallback) -> Vec<HostsFile> {
    let prefix = cache_prefix(&plan.cache_registry);
    let mirror_url = match prefix {
        Some(prefix) => format!("{}/v2/{prefix}", mirror.url()),
        None => mirror.url(),
    };
    let upstreams: BTreeSet<&str> = plan.jobs.iter().map(|job| job.source.host()).collect();
    let mut files: Vec<HostsFile> = upstreams
        .into_iter()
        .filter(|&host| host != mirror.host())
        .map(|host| {
            let served: Vec<String> = plan
                .jobs
                .iter()
                .filter(|job| job.source.host() == host)
                .filter(|job| served_by_upstream_name(job, prefix))
                .map(|job| job.source.path().to_owned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let server = match fallback {
                Fallback::Open => upstream_server(host, plan),
                Fallback::Closed => mirror_url.clone(),
            };
            let mut text = match fallback {
                Fallback::Open => "# Written by `image-sync hosts-toml`. Fail-open: what the cache cannot serve\n# (404, 5xx, no answer) is pulled from `server`, with the node's own quota.\n",
                Fallback::Closed => "# Written by `image-sync hosts-toml`. Fail-closed: the cache is `server` too;\n# what it cannot serve fails, and the upstream is never asked.\n",
            }
            .to_owned();
            text.push_str(&format!(
                "# In the cache under this name: {}.\n",
                if served.is_empty() {
                    "nothing (every image has a distinct cache_as)".to_owned()
                } else {
                    served.join(", ")
                }
            ));
            text.push_str(&format!("server = \"{server}\"\n"));
            if fallback == Fallback::Closed {
                text.push_str("capabilities = [\"pull\", \"resolve\"]\n");
                if prefix.is_some() {
                    text.push_str("override_path = true\n");
                }
            }
            text.push_str(&host_entry(&mirror_url, prefix.is_some()));
            HostsFile {
                registry: host.to_owned(),
                text,
            }
        })
        .collect();
    let cache_url = mirror.url();
    files.push(HostsFile {
        registry: mirror.host().to_owned(),
        text: format!(
            "# Written by `image-sync hosts-toml`. The cache itself, for pulls by its own name\n# ({}/<path>:<tag>: images with a distinct cache_as), over plain HTTP.\nserver = \"{cache_url}\"\ncapabilities = [\"pull\", \"resolve\"]\n{}",
            match prefix {
                Some(prefix) => format!("{}/{prefix}", mirror.host()),
                None => mirror.host().to_owned(),
            },
            host_entry(&cache_url, false)
        ),
    });
    files
}

/// Whether a node pulling the job's upstream name through the mirror finds it: the cache
/// path is the upstream path (under the prefix), not a distinct `cache_as`.
pub fn served_by_upstream_name(job: &crate::input::plan::Job, prefix: Option<&str>) -> bool {
    let expected = match prefix {
        Some(prefix) => format!("{prefix}/{}", job.source.path()),
        None => job.source.path().to_owned(),
    };
    job.target.path() == expected
}

fn host_entry(url: &str, override_path: bool) -> String {
    let mut entry = format!("\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
    if override_path {
        entry.push_str("  override_path = true\n");
    }
    entry
}

/// The upstream registry's own endpoint, as containerd would use it without a file.
fn upstream_server(host: &str, plan: &Plan) -> String {
    if host == DOCKER_HUB {
        return format!("https://{}", crate::registry::docker_hub::API_HOST);
    }
    let (name, _) = reference::split_port(host);
    let plain = plan.settings.insecure_registries.contains(host)
        || matches!(name, "localhost" | "127.0.0.1" | "[::1]");
    format!("{}://{host}", if plain { "http" } else { "https" })
}

/// Writes every file to `dir/<registry>/hosts.toml` (a temporary file renamed into place,
/// so containerd never reads half a file) and returns the paths written.
pub fn write(dir: &Path, files: &[HostsFile]) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::with_capacity(files.len());
    for file in files {
        let registry_dir = dir.join(&file.registry);
        std::fs::create_dir_all(&registry_dir)?;
        let path = registry_dir.join("hosts.toml");
        let temporary = registry_dir.join(".hosts.toml.image-sync-tmp");
        std::fs::write(&temporary, &file.text)?;
        std::fs::rename(&temporary, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// `image-sync hosts-toml`: validates `--mirror`, writes the files, logs each path and
/// which images nodes must pull by the cache's own name; returns the exit code.
pub fn run(plan: &Plan, args: &crate::input::cli::HostsTomlArgs) -> u8 {
    let mirror = match Mirror::parse(&args.mirror) {
        Ok(mirror) => mirror,
        Err(err) => {
            tracing::error!("invalid --mirror: {err}");
            return crate::output::exit::USAGE;
        }
    };
    let fallback = if args.fail_closed {
        Fallback::Closed
    } else {
        Fallback::Open
    };
    let files = hosts_files(plan, &mirror, fallback);
    match write(&args.dir, &files) {
        Ok(written) => {
            for path in written {
                tracing::info!(path = %path.display(), ?fallback, "wrote");
            }
        }
        Err(err) => {
            tracing::error!(
                "cannot write hosts.toml files under {}: {err}",
                args.dir.display()
            );
            return crate::output::exit::IMAGES_FAILED;
        }
    }
    let prefix = cache_prefix(&plan.cache_registry);
    for job in plan
        .jobs
        .iter()
        .filter(|job| !served_by_upstream_name(job, prefix))
    {
        tracing::warn!(
            image = %job.source.with_tag(&job.tag),
            pull_as = %crate::input::reference::Repository::new(mirror.host(), job.target.path()).with_tag(&job.tag),
            "has a distinct cache_as: nodes find it in the cache only by the cache's own name"
        );
    }
    crate::output::exit::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::config::RawConfig;

    fn plan(yaml: &str) -> Plan {
        let raw: RawConfig = serde_yaml_ng::from_str(yaml).expect("yaml");
        crate::input::plan::resolve(raw, Path::new("c.yaml")).expect("valid plan")
    }

    fn file<'a>(files: &'a [HostsFile], registry: &str) -> &'a str {
        &files
            .iter()
            .find(|f| f.registry == registry)
            .unwrap_or_else(|| panic!("no file for {registry} in {files:?}"))
            .text
    }

    const CONFIG: &str = r#"
cache_registry: "image-cache.image-cache.svc.cluster.local:5000"
images:
  - source: nginx
    tag: "1.27"
  - source: ghcr.io/project-zot/zot-linux-amd64
    tag: v2.1.2
  - source: ghcr.io/other/app
    tag: "1"
    cache_as: team/app
"#;

    #[test]
    fn fail_open_keeps_the_upstream_as_server_and_the_cache_as_mirror() {
        let mirror = Mirror::parse("http://10.96.120.15:5000").expect("mirror");
        let files = hosts_files(&plan(CONFIG), &mirror, Fallback::Open);
        let registries: Vec<&str> = files.iter().map(|f| f.registry.as_str()).collect();
        assert_eq!(registries, ["docker.io", "ghcr.io", "10.96.120.15:5000"]);
        let docker = file(&files, "docker.io");
        assert!(
            docker.ends_with(
                "server = \"https://registry-1.docker.io\"\n\n[host.\"http://10.96.120.15:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
            "{docker}"
        );
        let ghcr = file(&files, "ghcr.io");
        assert!(ghcr.contains("server = \"https://ghcr.io\"\n"), "{ghcr}");
        assert!(
            ghcr.contains("under this name: project-zot/zot-linux-amd64.\n"),
            "{ghcr}"
        );
        assert!(!ghcr.contains("override_path"), "{ghcr}");
    }

    #[test]
    fn fail_closed_makes_the_cache_the_server_and_keeps_it_a_host() {
        let mirror = Mirror::parse("http://10.96.120.15:5000/").expect("mirror");
        let files = hosts_files(&plan(CONFIG), &mirror, Fallback::Closed);
        let docker = file(&files, "docker.io");
        assert!(
            docker.contains("server = \"http://10.96.120.15:5000\"\ncapabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://10.96.120.15:5000\"]"),
            "{docker}"
        );
        assert!(!docker.contains("registry-1.docker.io"), "{docker}");
    }

    #[test]
    fn a_path_prefix_goes_into_the_host_url_with_override_path() {
        let config = CONFIG.replace(
            "image-cache.image-cache.svc.cluster.local:5000",
            "cache:5000/mirror",
        );
        let mirror = Mirror::parse("http://10.0.0.7:30500").expect("mirror");
        for fallback in [Fallback::Open, Fallback::Closed] {
            let files = hosts_files(&plan(&config), &mirror, fallback);
            let docker = file(&files, "docker.io");
            assert!(
                docker.contains(
                    "[host.\"http://10.0.0.7:30500/v2/mirror\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
                ),
                "{docker}"
            );
            assert_eq!(
                docker.contains("server = \"http://10.0.0.7:30500/v2/mirror\"\n"),
                fallback == Fallback::Closed,
                "{docker}"
            );
            let own = file(&files, "10.0.0.7:30500");
            assert!(
                own.contains("server = \"http://10.0.0.7:30500\"\n") && !own.contains("/v2"),
                "{own}"
            );
        }
    }

    #[test]
    fn a_loopback_or_listed_upstream_is_plain_http() {
        let config = r#"
cache_registry: "127.0.0.1:5000"
images:
  - {source: "127.0.0.1:5001/team/app", tag: "1"}
  - {source: "registry.internal:5002/team/app2", tag: "1"}
  - {source: "registry.example:443/team/app3", tag: "1"}
settings:
  insecure_registries: ["registry.internal:5002"]
"#;
        let mirror = Mirror::parse("http://127.0.0.1:5000").expect("mirror");
        let files = hosts_files(&plan(config), &mirror, Fallback::Open);
        assert!(file(&files, "127.0.0.1:5001").contains("server = \"http://127.0.0.1:5001\""));
        assert!(
            file(&files, "registry.internal:5002")
                .contains("server = \"http://registry.internal:5002\"")
        );
        assert!(
            file(&files, "registry.example:443")
                .contains("server = \"https://registry.example:443\"")
        );
    }

    #[test]
    fn only_images_without_a_distinct_cache_as_are_served_by_upstream_name() {
        let plan = plan(CONFIG);
        let served: Vec<bool> = plan
            .jobs
            .iter()
            .map(|job| served_by_upstream_name(job, None))
            .collect();
        assert_eq!(served, [true, true, false]);
    }

    #[test]
    fn mirrors_are_validated() {
        assert_eq!(
            Mirror::parse("http://10.96.0.1:5000").expect("ok").url(),
            "http://10.96.0.1:5000"
        );
        assert!(matches!(
            Mirror::parse("10.96.0.1:5000"),
            Err(MirrorError::Scheme(_))
        ));
        assert!(matches!(
            Mirror::parse("ftp://10.96.0.1"),
            Err(MirrorError::Scheme(_))
        ));
        for extra in [
            "http://10.96.0.1:5000/mirror",
            "http://user:pw@10.96.0.1",
            "http://10.96.0.1?x=1",
        ] {
            assert!(
                matches!(Mirror::parse(extra), Err(MirrorError::Extra(_))),
                "{extra}"
            );
        }
        assert!(matches!(
            Mirror::parse("http://image-cache.image-cache.svc.cluster.local:5000"),
            Err(MirrorError::ClusterDns(_))
        ));
        assert!(matches!(
            Mirror::parse("http://-x:5000"),
            Err(MirrorError::Host(_))
        ));
        assert!(matches!(
            Mirror::parse("http://a\"b"),
            Err(MirrorError::Host(_))
        ));
    }

    #[test]
    fn files_are_written_under_the_registry_directory() {
        let dir = tempfile::tempdir().expect("dir");
        let files = vec![HostsFile {
            registry: "docker.io".to_owned(),
            text: "server = \"x\"\n".to_owned(),
        }];
        let written = write(dir.path(), &files).expect("write");
        assert_eq!(written, [dir.path().join("docker.io/hosts.toml")]);
        assert_eq!(
            std::fs::read_to_string(&written[0]).expect("read"),
            "server = \"x\"\n"
        );
    }
}
