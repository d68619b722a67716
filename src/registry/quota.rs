//! Pull quota: what upstream registries say about it, what this run spent, and the reserve
//! that defers copies instead of exhausting it.
//!
//! Docker Hub sends `ratelimit-limit: 100;w=21600`, `ratelimit-remaining: 87;w=21600` and
//! `docker-ratelimit-source` on manifest responses, HEAD included (ghcr.io may send
//! `x-ratelimit-limit` / `x-ratelimit-remaining`); no headers means no limit. The headers
//! are read from responses image-sync receives anyway, so reading them costs no request.
//! Every upstream manifest request of the run (its own, and those crane and skopeo make)
//! is counted here per registry and method.

use std::collections::BTreeMap;
use std::sync::Mutex;

use reqwest::header::HeaderMap;
use serde::Serialize;

/// What a registry said about its quota in one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Pulls allowed per window.
    pub limit: u64,
    /// Pulls left in the window.
    pub remaining: u64,
    /// The window, in seconds, when given (`w=`).
    pub window_secs: Option<u64>,
}

/// The rate-limit headers of a response, when it has them.
pub fn rate_limit(headers: &HeaderMap) -> Option<(RateLimit, Option<String>)> {
    let value = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
    };
    let (limit, limit_window) = parse_count(value(["ratelimit-limit", "x-ratelimit-limit"])?)?;
    let (remaining, remaining_window) =
        parse_count(value(["ratelimit-remaining", "x-ratelimit-remaining"])?)?;
    let source = headers
        .get("docker-ratelimit-source")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Some((
        RateLimit {
            limit,
            remaining,
            window_secs: limit_window.or(remaining_window),
        },
        source,
    ))
}

/// Largest count or window a rate-limit header is taken to mean: a registry that claims more
/// (or a number past `u64`) is not believed past it, so that no arithmetic on it overflows.
const MAX_RATE_LIMIT_VALUE: u64 = u32::MAX as u64;

/// `100;w=21600` -> (100, Some(21600)); `87` -> (87, None). Counts and windows are capped
/// at [`MAX_RATE_LIMIT_VALUE`].
fn parse_count(value: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = value.split(';');
    let count = parts
        .next()?
        .trim()
        .parse::<u64>()
        .ok()?
        .min(MAX_RATE_LIMIT_VALUE);
    let window = parts.find_map(|part| {
        part.trim()
            .strip_prefix("w=")
            .and_then(|secs| secs.trim().parse::<u64>().ok())
            .map(|secs| secs.min(MAX_RATE_LIMIT_VALUE))
    });
    Some((count, window))
}

/// `settings.quota_reserve`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// This many pulls.
    Pulls(u64),
    /// This percentage of the reported limit.
    Percent(u8),
}

impl Default for Reserve {
    fn default() -> Self {
        Self::Percent(10)
    }
}

impl Reserve {
    /// The reserve in pulls for a registry with this limit (rounded up).
    pub fn pulls(self, limit: u64) -> u64 {
        match self {
            Self::Pulls(pulls) => pulls,
            Self::Percent(percent) => (limit * u64::from(percent)).div_ceil(100),
        }
    }
}

/// What one registry's quota looked like during the run, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaReport {
    /// Pulls allowed per window.
    pub limit: u64,
    /// The window in seconds, when the registry gave it.
    pub window_secs: Option<u64>,
    /// Pulls left before the run's first pull (or when first seen, without pulls).
    pub remaining_at_start: u64,
    /// Pulls left after the run's last pull, as the registry last reported it (0 after a
    /// 429).
    pub remaining_at_end: u64,
    /// `docker-ratelimit-source` (an IP address or account id), when sent.
    pub source: Option<String>,
    /// The reserve in force, in pulls.
    pub reserve: u64,
    /// Manifest GETs this run sent or caused (its checks' and the copies').
    pub manifest_gets: u64,
}

/// One registry's ledger.
#[derive(Debug, Default, Clone)]
struct Account {
    latest: Option<RateLimit>,
    source: Option<String>,
    /// `remaining` when the first copy started, for the report.
    at_start: Option<u64>,
    /// This shard's share of `at_start`: what the run's own copies may spend from.
    start_share: Option<u64>,
    /// The lowest `remaining` any answer reported in this run (this shard's share of it).
    lowest: Option<u64>,
    /// Pulls of copies started in this run: exact once a copy settled, 1 while running.
    committed: u64,
    /// Copies admitted and not settled yet.
    in_flight: u64,
    /// A 429 came back: nothing is left.
    exhausted: bool,
    heads: u64,
    gets: u64,
    copies: u64,
}

impl Account {
    /// The pulls this run may still count on: what was left at its first copy minus what
    /// its copies spent (or hold, in flight), and never more than the lowest answer
    /// minus the copies in flight.
    fn left(&self) -> Option<u64> {
        let own = self
            .start_share
            .map(|start| start.saturating_sub(self.committed));
        let seen = self
            .lowest
            .map(|lowest| lowest.saturating_sub(self.in_flight));
        match (own, seen) {
            (Some(own), Some(seen)) => Some(own.min(seen)),
            (own, seen) => own.or(seen),
        }
    }
}

/// The upstream quota ledger of one run, by registry (as the config names it). Every
/// upstream manifest answer goes through [`Ledger::answered`], every copy through
/// [`Ledger::admit`] and [`Ledger::settle`]: nothing else counts pulls.
///
/// A copy is admitted while what is left stays above the reserve, what is left being the
/// lower of: `remaining` at the run's first copy minus the pulls of the run's copies (one
/// per copy in flight, exact once settled), and the lowest `remaining` any answer of the
/// run reported minus the copies in flight (other clients behind the same address spend
/// the same quota; an answer may already count a copy in flight, which then counts twice
/// until it settles: on the safe side).
///
/// Shards are separate processes that cannot see each other's copies: with `count`
/// shards each keeps to its share, `remaining / count` (rounded down) of every answer and
/// `reserve / count` (rounded up) kept back, so that the shards together never take the
/// registry below the reserve, whatever order they run in.
#[derive(Debug)]
pub struct Ledger {
    reserve: Reserve,
    shares: u64,
    accounts: Mutex<BTreeMap<String, Account>>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new(Reserve::default())
    }
}

/// What one upstream manifest answer (or a tool's run) told the ledger.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// Manifest HEADs sent.
    pub heads: u32,
    /// Manifest GETs sent (pulls).
    pub gets: u32,
    /// The rate-limit headers of the answer, when it had them.
    pub limit: Option<(RateLimit, Option<String>)>,
    /// The registry answered 429: nothing is left (when it is metered).
    pub rate_limited: bool,
}

impl Answer {
    /// `heads` HEADs and `gets` GETs, nothing else known.
    pub fn requests(heads: u32, gets: u32) -> Self {
        Self {
            heads,
            gets,
            ..Self::default()
        }
    }
}

/// A copy admitted under the reserve; settle it with the pulls it made.
#[derive(Debug)]
#[must_use = "settle the ticket with the copy's pulls"]
pub struct Ticket {
    registry: String,
}

/// Why a copy may not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferral {
    /// The registry.
    pub registry: String,
    /// Its projected remaining pulls (this shard's share, with shards).
    pub remaining: u64,
    /// The reserve (this shard's share, with shards).
    pub reserve: u64,
    /// The shard count the quota is shared by (1 without shards).
    pub shares: u64,
}

impl std::fmt::Display for Deferral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "quota reserve: {} has {} pulls left and {} are kept in reserve for the cluster's nodes",
            self.registry, self.remaining, self.reserve
        )?;
        if self.shares > 1 {
            write!(
                f,
                " (this shard's share: 1/{} of the remaining and of the reserve)",
                self.shares
            )?;
        }
        f.write_str("; the next run tries again")
    }
}

impl Ledger {
    /// A ledger keeping `reserve` of every metered registry's quota.
    pub fn new(reserve: Reserve) -> Self {
        Self::shared(reserve, 1)
    }

    /// A ledger for one of `shares` shards (see [`Ledger`]).
    pub fn shared(reserve: Reserve, shares: u32) -> Self {
        Self {
            reserve,
            shares: u64::from(shares.max(1)),
            accounts: Mutex::new(BTreeMap::new()),
        }
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Account>> {
        self.accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with<T>(&self, registry: &str, update: impl FnOnce(&mut Account) -> T) -> T {
        update(self.accounts().entry(registry.to_owned()).or_default())
    }

    /// Records what an upstream answer said: the requests it took, its quota headers, a 429.
    pub fn answered(&self, registry: &str, answer: Answer) {
        let empty =
            answer.heads == 0 && answer.gets == 0 && answer.limit.is_none() && !answer.rate_limited;
        if empty {
            return;
        }
        let shares = self.shares;
        self.with(registry, |account| {
            account.heads += u64::from(answer.heads);
            account.gets += u64::from(answer.gets);
            if let Some((limit, source)) = answer.limit {
                account.latest = Some(limit);
                if source.is_some() {
                    account.source = source;
                }
                let share = limit.remaining / shares;
                account.lowest = Some(account.lowest.map_or(share, |lowest| lowest.min(share)));
            }
            if answer.rate_limited {
                account.exhausted = true;
            }
        });
    }

    /// Admits a copy from `registry` unless it would take the quota below the reserve.
    /// A copy counts as one pull until it is settled.
    pub fn admit(&self, registry: &str) -> Result<Ticket, Deferral> {
        let (reserve, shares) = (self.reserve, self.shares);
        self.with(registry, |account| {
            if let Some(latest) = account.latest {
                account.at_start.get_or_insert(latest.remaining);
                account.start_share.get_or_insert(latest.remaining / shares);
                let kept = reserve.pulls(latest.limit).div_ceil(shares);
                let left = if account.exhausted {
                    0
                } else {
                    account.left().unwrap_or_default()
                };
                if kept > 0 && (account.exhausted || left < kept + 1) {
                    return Err(Deferral {
                        registry: registry.to_owned(),
                        remaining: left,
                        reserve: kept,
                        shares,
                    });
                }
            }
            account.in_flight += 1;
            account.committed += 1;
            account.copies += 1;
            Ok(Ticket {
                registry: registry.to_owned(),
            })
        })
    }

    /// Settles a copy: the GETs it made (and its children's) are counted and replace its
    /// provisional pull.
    pub fn settle(&self, ticket: Ticket, pulls: u32) {
        self.with(&ticket.registry, |account| {
            account.gets += u64::from(pulls);
        });
        self.settle_counted(ticket, pulls);
    }

    /// Settles a copy whose GETs were counted as they were answered (the built-in client's
    /// requests go through [`Ledger::answered`]): its `pulls` replace the provisional pull
    /// without being counted twice.
    pub fn settle_counted(&self, ticket: Ticket, pulls: u32) {
        self.with(&ticket.registry, |account| {
            account.in_flight = account.in_flight.saturating_sub(1);
            account.committed = account.committed.saturating_sub(1) + u64::from(pulls);
        });
    }

    /// Registries that sent rate-limit headers, copied in this run, and have not run out:
    /// they deserve one free HEAD at the end for `remaining_at_end`.
    pub fn to_refresh(&self) -> Vec<String> {
        let accounts = self.accounts();
        accounts
            .iter()
            .filter(|(_, a)| a.latest.is_some() && a.copies > 0 && !a.exhausted)
            .map(|(registry, _)| registry.clone())
            .collect()
    }

    /// The quota of every registry that sent rate-limit headers.
    pub fn report(&self) -> BTreeMap<String, QuotaReport> {
        let accounts = self.accounts();
        accounts
            .iter()
            .filter_map(|(registry, account)| {
                let latest = account.latest?;
                Some((
                    registry.clone(),
                    QuotaReport {
                        limit: latest.limit,
                        window_secs: latest.window_secs,
                        remaining_at_start: account.at_start.unwrap_or(latest.remaining),
                        remaining_at_end: if account.exhausted {
                            0
                        } else {
                            latest.remaining
                        },
                        source: account.source.clone(),
                        reserve: self.reserve.pulls(latest.limit),
                        manifest_gets: account.gets,
                    },
                ))
            })
            .collect()
    }

    /// Upstream manifest requests by registry: (HEADs, GETs).
    pub fn requests(&self) -> BTreeMap<String, (u64, u64)> {
        let accounts = self.accounts();
        accounts
            .iter()
            .map(|(registry, account)| (registry.clone(), (account.heads, account.gets)))
            .collect()
    }

    /// The last reported (limit, remaining) by registry, for the metrics.
    pub fn limits(&self) -> BTreeMap<String, (u64, u64)> {
        self.report()
            .into_iter()
            .map(|(registry, quota)| (registry, (quota.limit, quota.remaining_at_end)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header"));
        }
        map
    }

    fn seen(limit: RateLimit, source: Option<&str>) -> Answer {
        Answer {
            heads: 1,
            limit: Some((limit, source.map(str::to_owned))),
            ..Answer::default()
        }
    }

    fn hub(remaining: u64) -> RateLimit {
        RateLimit {
            limit: 100,
            remaining,
            window_secs: Some(21600),
        }
    }

    /// Issue 18 item 2: later answers saying fewer pulls are left than the first one
    /// lower what admission sees; pulls in flight count before they are settled.
    #[test]
    fn admission_uses_the_lowest_remaining_seen_minus_pulls_in_flight() {
        let ledger = Ledger::new(Reserve::Pulls(10));
        ledger.answered("docker.io", seen(hub(40), None));
        let first = ledger.admit("docker.io").expect("40 left");
        // Other clients on the same IP pulled: the registry now says 5 are left.
        ledger.answered("docker.io", seen(hub(5), None));
        let deferral = ledger.admit("docker.io").expect_err("5 < reserve");
        assert_eq!(
            (deferral.remaining, deferral.reserve),
            (4, 10),
            "5 minus one in flight"
        );
        ledger.settle(first, 1);
        // A later, higher answer (a new window) does not raise it within the run.
        ledger.answered("docker.io", seen(hub(60), None));
        assert_eq!(
            ledger.admit("docker.io").expect_err("still low").remaining,
            5
        );
        assert_eq!(ledger.report()["docker.io"].remaining_at_start, 40);
        // Without later answers, the run's own pulls come off what was left at its start.
        let ledger = Ledger::new(Reserve::Pulls(2));
        ledger.answered("docker.io", seen(hub(5), None));
        let ticket = ledger.admit("docker.io").expect("5 left");
        ledger.settle(ticket, 3);
        assert_eq!(ledger.admit("docker.io").expect_err("2 left").remaining, 2);

        let ledger = Ledger::new(Reserve::Pulls(3));
        ledger.answered("docker.io", seen(hub(6), None));
        let tickets: Vec<_> = (0..3)
            .map(|_| ledger.admit("docker.io").expect("in flight"))
            .collect();
        let deferral = ledger
            .admit("docker.io")
            .expect_err("6 - 3 in flight < 3 + 1");
        assert_eq!(deferral.remaining, 3);
        for ticket in tickets {
            ledger.settle(ticket, 1);
        }
        assert_eq!(ledger.admit("docker.io").expect_err("3 left").remaining, 3);
    }

    /// Four shards each see the whole `remaining` and keep a quarter of it and of the
    /// reserve: together they never cross the reserve.
    #[test]
    fn shards_each_keep_their_share_and_together_stop_at_the_reserve() {
        for (remaining, reserve) in [(40_u64, 10_u64), (41, 10), (13, 10), (100, 0), (7, 3)] {
            let mut total = 0;
            for _ in 0..4 {
                let ledger = Ledger::shared(Reserve::Pulls(reserve), 4);
                ledger.answered("docker.io", seen(hub(remaining), None));
                while let Ok(ticket) = ledger.admit("docker.io") {
                    ledger.settle(ticket, 1);
                    total += 1;
                    if total > 1_000 {
                        break;
                    }
                }
            }
            if reserve > 0 {
                assert!(
                    total + reserve <= remaining,
                    "{total} pulls from {remaining} with {reserve} kept"
                );
                assert!(
                    total + reserve + 8 > remaining,
                    "not needlessly low: {total} of {remaining}"
                );
            }
        }
    }

    #[test]
    fn docker_hub_and_ghcr_headers_are_read() {
        let hub = headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "87;w=21600"),
            ("docker-ratelimit-source", "203.0.113.7"),
        ]);
        assert_eq!(
            rate_limit(&hub),
            Some((
                RateLimit {
                    limit: 100,
                    remaining: 87,
                    window_secs: Some(21600)
                },
                Some("203.0.113.7".to_owned())
            ))
        );
        let ghcr = headers(&[
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "4999"),
        ]);
        assert_eq!(
            rate_limit(&ghcr).map(|(limit, _)| (limit.limit, limit.remaining, limit.window_secs)),
            Some((5000, 4999, None))
        );
        assert_eq!(rate_limit(&HeaderMap::new()), None, "no headers: no limit");
        assert_eq!(rate_limit(&headers(&[("ratelimit-limit", "x")])), None);
    }

    #[test]
    fn reserves_are_pulls_or_a_percentage_of_the_limit() {
        assert_eq!(Reserve::default().pulls(100), 10);
        assert_eq!(Reserve::Percent(10).pulls(15), 2, "rounded up");
        assert_eq!(Reserve::Pulls(7).pulls(100), 7);
        assert_eq!(Reserve::Pulls(0).pulls(100), 0);
    }

    #[test]
    fn copies_are_admitted_until_the_reserve_and_settled_exactly() {
        let ledger = Ledger::new(Reserve::Pulls(7));
        let limit = |remaining| RateLimit {
            limit: 100,
            remaining,
            window_secs: Some(21600),
        };
        ledger.answered("docker.io", seen(limit(10), Some("src")));
        let mut admitted = 0;
        while let Ok(ticket) = ledger.admit("docker.io") {
            ledger.settle(ticket, 1);
            admitted += 1;
        }
        assert_eq!(admitted, 3, "10 -> 7: three copies of one pull");
        let deferral = ledger.admit("docker.io").expect_err("reserve");
        assert_eq!((deferral.remaining, deferral.reserve), (7, 7));
        assert!(
            deferral
                .to_string()
                .starts_with("quota reserve: docker.io has 7 pulls left")
        );
        let ticket = ledger
            .admit("ghcr.io")
            .expect("unmetered registries are never deferred");
        ledger.settle(ticket, 3);
        ledger.answered("docker.io", seen(limit(7), None));
        ledger.answered("docker.io", Answer::requests(5, 0));
        let report = ledger.report();
        assert_eq!(report["docker.io"].remaining_at_start, 10);
        assert_eq!(report["docker.io"].remaining_at_end, 7);
        assert_eq!(
            report["docker.io"].manifest_gets, 3,
            "the settled copies' GETs"
        );
        assert!(
            !report.contains_key("ghcr.io"),
            "no headers, no quota entry"
        );
        ledger.answered(
            "docker.io",
            Answer {
                rate_limited: true,
                ..Answer::default()
            },
        );
        assert_eq!(ledger.report()["docker.io"].remaining_at_end, 0);
        assert!(
            ledger.to_refresh().is_empty(),
            "an exhausted registry gets no HEAD"
        );
    }

    #[test]
    fn a_zero_reserve_never_defers() {
        let ledger = Ledger::new(Reserve::Pulls(0));
        ledger.answered(
            "docker.io",
            seen(
                RateLimit {
                    limit: 100,
                    remaining: 1,
                    window_secs: None,
                },
                None,
            ),
        );
        for _ in 0..3 {
            let ticket = ledger.admit("docker.io").expect("off");
            ledger.settle(ticket, 1);
        }
    }
}
