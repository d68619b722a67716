//! Circuit breakers, one per registry host: once a registry refuses connections or rate
//! limits us, it gets no new request in this run, and its remaining images fail at once.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::failure::{Failure, FailureKind};

/// The breakers of one run.
#[derive(Debug, Default)]
pub struct Breakers {
    tripped: Mutex<HashMap<String, Failure>>,
}

impl Breakers {
    /// Trips the breaker of every host in `hosts` that `failure` names (all of them when it
    /// names none, as the failure came from talking to them). Returns the hosts newly tripped.
    pub fn trip(&self, hosts: &[&str], failure: &Failure) -> Vec<String> {
        let named: Vec<&str> = hosts
            .iter()
            .copied()
            .filter(|host| failure.message.contains(host))
            .collect();
        let targets = if named.is_empty() {
            hosts.to_vec()
        } else {
            named
        };
        let Ok(mut tripped) = self.tripped.lock() else {
            return Vec::new();
        };
        let mut newly = Vec::new();
        for host in targets {
            if !tripped.contains_key(host) {
                tripped.insert(host.to_owned(), failure.clone());
                newly.push(host.to_owned());
            }
        }
        newly
    }

    /// A `skipped` failure when any of `hosts` is tripped.
    pub fn check(&self, hosts: &[&str]) -> Option<Failure> {
        let tripped = self.tripped.lock().ok()?;
        hosts.iter().find_map(|host| {
            let cause = tripped.get(*host)?;
            let state = match cause.kind {
                FailureKind::RateLimited => "rate limited",
                FailureKind::TimedOut => "not answering",
                _ => "unreachable",
            };
            Some(Failure::new(
                FailureKind::Skipped,
                format!(
                    "{host} {state}; no more requests go to it in this run (first failure: {})",
                    cause.message
                ),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tripped_host_skips_later_steps_and_others_are_untouched() {
        let breakers = Breakers::default();
        assert!(breakers.check(&["up:5000"]).is_none());
        let refused = Failure::new(
            FailureKind::Unreachable,
            "crane digest cache:5000/a:b: dial tcp cache:5000: connection refused",
        );
        assert_eq!(
            breakers.trip(&["up:5000", "cache:5000"], &refused),
            ["cache:5000"]
        );
        assert!(
            breakers.trip(&["cache:5000"], &refused).is_empty(),
            "trips once"
        );
        assert!(breakers.check(&["up:5000"]).is_none());
        let skipped = breakers.check(&["up:5000", "cache:5000"]).expect("tripped");
        assert_eq!(skipped.kind, FailureKind::Skipped);
        assert!(
            skipped
                .message
                .starts_with("skipped: cache:5000 unreachable;"),
            "{}",
            skipped.message
        );
        let limited = Failure::new(FailureKind::RateLimited, "TOOMANYREQUESTS");
        breakers.trip(&["docker.io"], &limited);
        assert!(
            breakers
                .check(&["docker.io"])
                .expect("tripped")
                .message
                .contains("docker.io rate limited")
        );
    }
}
