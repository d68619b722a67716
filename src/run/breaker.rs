//! Circuit breakers, one per registry host: once a registry refuses connections or rate
//! limits us, it gets no new request in this run, and its remaining images fail at once.
//! The host comes from the failure's own `host` (the registry the failing request went
//! to), never from host names that appear in its message.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::registry::{Class, Failure};

/// The breakers of one run.
#[derive(Debug, Default)]
pub struct Breakers {
    tripped: Mutex<HashMap<String, Failure>>,
}

impl Breakers {
    /// Trips the breaker of the registry `failure` came from. Returns that host when this
    /// tripped it; `None` when it was tripped already or the failure names no registry.
    pub fn trip(&self, failure: &Failure) -> Option<String> {
        let host = failure.host.as_deref()?;
        let mut tripped = self.tripped.lock().ok()?;
        if tripped.contains_key(host) {
            return None;
        }
        tripped.insert(host.to_owned(), failure.clone());
        Some(host.to_owned())
    }

    /// A `skipped` failure when any of `hosts` is tripped.
    pub fn check(&self, hosts: &[&str]) -> Option<Failure> {
        let tripped = self.tripped.lock().ok()?;
        hosts.iter().find_map(|host| {
            let cause = tripped.get(*host)?;
            let state = match cause.class {
                Class::RateLimited => "rate limited",
                Class::TimedOut => "not answering",
                Class::WriteRefused => "refused a referrer copy",
                _ => "unreachable",
            };
            let skipped = Failure::new(
                Class::Skipped,
                format!(
                    "{host} {state}; no more requests go to it in this run (first failure: {})",
                    cause.message
                ),
            );
            Some(match cause.side {
                Some(side) => skipped.on(side, Some(host)),
                None => skipped,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Side;

    #[test]
    fn the_failing_registry_is_tripped_whatever_the_message_names() {
        let breakers = Breakers::default();
        assert!(breakers.check(&["up:5000"]).is_none());
        // The message names both ends; only the failure's host counts.
        let refused = Failure::new(
            Class::Unreachable,
            "crane copy up:5000/a@sha256:1 cache:5000/a:b: dial tcp cache:5000: connection refused",
        )
        .on(Side::Cache, Some("cache:5000"));
        assert_eq!(breakers.trip(&refused).as_deref(), Some("cache:5000"));
        assert!(breakers.trip(&refused).is_none(), "trips once");
        assert!(breakers.check(&["up:5000"]).is_none());
        let skipped = breakers.check(&["up:5000", "cache:5000"]).expect("tripped");
        assert_eq!(skipped.class, Class::Skipped);
        assert!(
            skipped
                .message
                .starts_with("skipped: cache:5000 unreachable;"),
            "{}",
            skipped.message
        );
        let limited = Failure::new(Class::RateLimited, "TOOMANYREQUESTS cache:5000")
            .on(Side::Upstream, Some("docker.io"));
        breakers.trip(&limited);
        assert!(
            breakers
                .check(&["docker.io"])
                .expect("tripped")
                .message
                .contains("docker.io rate limited")
        );
        let unattributed = Failure::new(Class::RateLimited, "somewhere");
        assert!(
            breakers.trip(&unattributed).is_none(),
            "no host, no breaker"
        );
    }
}
