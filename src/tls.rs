//! Which registries are spoken to without TLS verification, and how a copy reaches them
//! without ever weakening TLS towards a registry the user did not mark insecure.
//!
//! crane speaks plain HTTP by itself to `localhost:PORT`, `*.localhost`, `127.0.0.1`,
//! `::1` and RFC 1918 IPv4 literals; its `--insecure` switch applies to *every* registry
//! of a command. skopeo has per-side switches. This module holds the one policy both
//! tools follow.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use crate::input::reference::split_port;

/// The TLS stance towards every registry of a run.
#[derive(Debug, Clone, Default)]
pub struct TlsPolicy {
    /// `settings.insecure_registries`, lowercase `host[:port]`.
    listed: BTreeSet<String>,
    /// Cache host -> IP literal crane speaks plain HTTP to, when the cache host is listed
    /// and resolves to such an address (see [`TlsPolicy::with_cache_address`]).
    cache_literal: Option<(String, String)>,
}

/// How a copy between two registries is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyRoute {
    /// `crane copy`, with `--insecure` only when every registry of the command tolerates it.
    Crane {
        /// Pass `--insecure`.
        insecure: bool,
        /// The destination host to write into the reference (an IP literal for a
        /// listed cache that resolves to a private address).
        destination_host: String,
    },
    /// crane cannot do it without weakening the upstream: skopeo with per-side switches.
    Skopeo,
}

impl TlsPolicy {
    /// A policy from the validated `settings.insecure_registries`.
    pub fn new(listed: BTreeSet<String>) -> Self {
        Self {
            listed,
            cache_literal: None,
        }
    }

    /// Records that the (listed) cache host resolves to `address`, so that crane can reach
    /// it as an IP literal without `--insecure`. Ignored unless the host is listed and
    /// crane would speak plain HTTP to the literal.
    pub fn with_cache_address(mut self, cache_host: &str, address: IpAddr) -> Self {
        let (_, port) = split_port(cache_host);
        let literal = match (address, port) {
            (IpAddr::V4(v4), Some(port)) => format!("{v4}:{port}"),
            (IpAddr::V4(v4), None) => v4.to_string(),
            (IpAddr::V6(v6), Some(port)) => format!("[{v6}]:{port}"),
            (IpAddr::V6(v6), None) => v6.to_string(),
        };
        if self.is_listed(cache_host) && crane_speaks_http(&literal) {
            self.cache_literal = Some((cache_host.to_owned(), literal));
        }
        self
    }

    /// The IP literal copies reach the (listed) cache by, when there is one.
    pub fn cache_literal(&self) -> Option<&str> {
        self.cache_literal
            .as_ref()
            .map(|(_, literal)| literal.as_str())
    }

    /// The user marked this host insecure.
    pub fn is_listed(&self, host: &str) -> bool {
        self.listed.contains(&host.to_ascii_lowercase())
    }

    /// Hosts the user listed, for the start-up log line.
    pub fn listed(&self) -> impl Iterator<Item = &str> {
        self.listed.iter().map(String::as_str)
    }

    /// Whether skopeo should verify TLS for this host. Hosts crane speaks plain HTTP to by
    /// itself get the same treatment, so both tools agree.
    pub fn skopeo_verifies(&self, host: &str) -> bool {
        !(self.is_listed(host) || crane_speaks_http(host))
    }

    /// Whether a crane command touching only `host` needs `--insecure`.
    pub fn crane_insecure_for(&self, host: &str) -> bool {
        self.is_listed(host)
    }

    /// How to copy from `source_host` to `destination_host`.
    pub fn copy_route(&self, source_host: &str, destination_host: &str) -> CopyRoute {
        let tolerant = |host: &str| self.is_listed(host) || crane_speaks_http(host);
        // A listed host crane already speaks plain HTTP to needs no `--insecure`.
        let needs = |host: &str| self.is_listed(host) && !crane_speaks_http(host);
        let needs_insecure = needs(source_host) || needs(destination_host);
        if !needs_insecure {
            return CopyRoute::Crane {
                insecure: false,
                destination_host: destination_host.to_owned(),
            };
        }
        if tolerant(source_host) && tolerant(destination_host) {
            return CopyRoute::Crane {
                insecure: true,
                destination_host: destination_host.to_owned(),
            };
        }
        match &self.cache_literal {
            Some((host, literal)) if host == destination_host && !self.is_listed(source_host) => {
                CopyRoute::Crane {
                    insecure: false,
                    destination_host: literal.clone(),
                }
            }
            _ => CopyRoute::Skopeo,
        }
    }
}

/// go-containerregistry's `name.Registry.Scheme()` heuristic (v0.22.1): the hosts crane
/// speaks plain HTTP to without `--insecure`.
pub fn crane_speaks_http(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let (name, _) = split_port(&host);
    if host.starts_with("localhost:") || name.ends_with(".localhost") {
        return true;
    }
    if name == "127.0.0.1" || host == "::1" || name == "[::1]" {
        return true;
    }
    name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_private())
}

/// Whether an address of the cache could be handed to crane as a plain-HTTP literal.
pub fn is_plain_http_literal(address: IpAddr) -> bool {
    crane_speaks_http(&address.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(listed: &[&str]) -> TlsPolicy {
        TlsPolicy::new(listed.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn crane_heuristic_matches_go_containerregistry() {
        for http in [
            "localhost:5000",
            "a.localhost",
            "a.localhost:1",
            "127.0.0.1",
            "127.0.0.1:5000",
            "::1",
            "[::1]:5000",
            "10.1.2.3:5000",
            "172.16.0.1",
            "192.168.1.1:80",
        ] {
            assert!(crane_speaks_http(http), "{http}");
        }
        for https in [
            "localhost",
            "127.0.0.2:5000",
            "172.32.0.1",
            "cache:5000",
            "docker.io",
            "8.8.8.8",
            "vm:5000",
        ] {
            assert!(!crane_speaks_http(https), "{https}");
        }
    }

    #[test]
    fn skopeo_agrees_with_crane_and_the_list() {
        let policy = policy(&["cache:5000"]);
        assert!(!policy.skopeo_verifies("cache:5000"));
        assert!(!policy.skopeo_verifies("127.0.0.1:5001"));
        assert!(policy.skopeo_verifies("docker.io"));
        assert!(policy.skopeo_verifies("cache:5001"));
    }

    #[test]
    fn insecure_never_reaches_a_verified_upstream() {
        let cache_only = policy(&["cache:5000"]);
        assert_eq!(
            cache_only.copy_route("docker.io", "cache:5000"),
            CopyRoute::Skopeo
        );
        assert_eq!(
            cache_only.copy_route("docker.io", "127.0.0.1:5000"),
            CopyRoute::Crane {
                insecure: false,
                destination_host: "127.0.0.1:5000".into()
            }
        );
        let both = policy(&["cache:5000", "up:5000"]);
        assert_eq!(
            both.copy_route("up:5000", "cache:5000"),
            CopyRoute::Crane {
                insecure: true,
                destination_host: "cache:5000".into()
            }
        );
        assert_eq!(
            cache_only.copy_route("127.0.0.1:5001", "cache:5000"),
            CopyRoute::Crane {
                insecure: true,
                destination_host: "cache:5000".into()
            }
        );
        assert_eq!(
            policy(&["up:5000"]).copy_route("up:5000", "ghcr.io"),
            CopyRoute::Skopeo
        );
    }

    #[test]
    fn a_listed_loopback_cache_needs_no_insecure_switch() {
        let listed = policy(&["127.0.0.1:5000"]);
        assert_eq!(
            listed.copy_route("vm:5001", "127.0.0.1:5000"),
            CopyRoute::Crane {
                insecure: false,
                destination_host: "127.0.0.1:5000".into()
            }
        );
    }

    #[test]
    fn a_listed_cache_on_a_private_address_is_reached_by_literal() {
        let policy = policy(&["cache:5000"])
            .with_cache_address("cache:5000", "10.96.0.12".parse().expect("ip"));
        assert_eq!(
            policy.copy_route("docker.io", "cache:5000"),
            CopyRoute::Crane {
                insecure: false,
                destination_host: "10.96.0.12:5000".into()
            }
        );
        let public = policy_with_public();
        assert_eq!(
            public.copy_route("docker.io", "cache:5000"),
            CopyRoute::Skopeo
        );
        let unlisted =
            TlsPolicy::default().with_cache_address("cache:5000", "10.0.0.1".parse().expect("ip"));
        assert_eq!(
            unlisted.copy_route("docker.io", "cache:5000"),
            CopyRoute::Crane {
                insecure: false,
                destination_host: "cache:5000".into()
            }
        );
    }

    fn policy_with_public() -> TlsPolicy {
        policy(&["cache:5000"]).with_cache_address("cache:5000", "8.8.8.8".parse().expect("ip"))
    }
}
