//! The two operations the sync asks for, a digest check and a copy, and the tools that
//! carry them out: image-sync's own client for checks (crane, then skopeo, for what it
//! hands over), crane for copies (skopeo when crane is missing, cannot reach the cache
//! without weakening TLS, or failed in a way that says crane itself is the problem).
//!
//! A check has one deadline for every request and fallback in it. A copy is one tool
//! attempt; the caller decides whether another follows.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::client::{Checked, Client, Listed, Want};
use super::credentials::{Keyring, Lookup};
use super::failure::{Class, Failure, Side};
use super::quota::{Answer, Ledger, Reserve};
use super::tool_errors::{self, Ends, Spent, ToolExit};
use super::{crane, find_on_path, skopeo};
use crate::input::reference::{Digest, Repository, Tag};
use crate::process::{self, Cancel, CommandSpec, RunError};
use crate::tls::{CopyRoute, TlsPolicy};

/// The tool that did a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// image-sync's own request (no child process).
    #[serde(rename = "image-sync")]
    Builtin,
    /// go-containerregistry's crane.
    Crane,
    /// skopeo.
    Skopeo,
}

impl Tool {
    /// The executable's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Builtin => "image-sync",
            Self::Crane => "crane",
            Self::Skopeo => "skopeo",
        }
    }
}

/// Who reads digests (`settings.digest_check`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DigestCheck {
    /// image-sync's own HEAD, handing to crane what it does not understand.
    #[default]
    Builtin,
    /// Every check is a `crane digest` process, as the design card draws it.
    Crane,
}

/// The outcome of a step, the last tool that tried it, and what it cost.
#[derive(Debug, Clone)]
pub struct Attempted<T> {
    /// The tool whose answer this is (`None` when no tool could run).
    pub tool: Option<Tool>,
    /// The value, or why the step failed.
    pub outcome: Result<T, Failure>,
    /// Tool attempts made (the built-in client, crane and skopeo each count one).
    pub tries: u32,
    /// Upstream manifest GETs sent (pulls on Docker Hub): a check's; for a copy, the top
    /// manifest's (and its retries'), without the index's children.
    pub gets: u32,
    /// The manifests an index lists: read from the manifest by a check that GETs it, or as
    /// the copying tool reported handling them (`None`: not known).
    pub children: Option<u32>,
}

impl<T> Attempted<T> {
    fn new(tool: Option<Tool>, outcome: Result<T, Failure>, tries: u32) -> Self {
        Self {
            tool,
            outcome,
            tries,
            gets: 0,
            children: None,
        }
    }
}

/// Where a copy lands: under a tag, or by digest only.
#[derive(Debug, Clone, Copy)]
enum Destination<'a> {
    Tag(&'a Tag),
    Digest(&'a Digest),
}

impl Destination<'_> {
    fn on(self, repository: &Repository) -> String {
        match self {
            Self::Tag(tag) => repository.with_tag(tag),
            Self::Digest(digest) => repository.with_digest(digest),
        }
    }
}

/// The tools found on PATH and how to call them.
pub struct Toolbox {
    client: Option<Client>,
    keyring: Arc<Keyring>,
    digest_check: DigestCheck,
    crane: Option<PathBuf>,
    skopeo: Option<PathBuf>,
    tmpdir: PathBuf,
    tls: TlsPolicy,
    ledger: Arc<Ledger>,
    /// A private Docker config giving the cache's IP literal the cache's credentials
    /// (crane finds none for the literal otherwise); removed when the toolbox drops.
    literal_auth: Option<super::private_config::PrivateConfig>,
}

impl Toolbox {
    /// Finds crane and skopeo on PATH and the credentials crane would use; when copies
    /// reach the cache by IP literal and the cache has credentials, writes them for the
    /// literal into a private config.
    pub async fn discover(
        tls: TlsPolicy,
        digest_check: DigestCheck,
        cache_host: &str,
        reserve: Reserve,
        quota_shares: u32,
    ) -> Self {
        let keyring = Arc::new(Keyring::discover());
        let ledger = Arc::new(Ledger::shared(reserve, quota_shares));
        let lookup_deadline = Instant::now() + Duration::from_secs(30);
        // What a run killed by SIGKILL left behind goes first.
        super::private_config::remove_stale(&std::env::temp_dir());
        let literal_auth = match tls.cache_literal() {
            Some(literal) => match keyring.lookup_registry(cache_host, lookup_deadline).await {
                Ok(Lookup::Basic(basic)) => {
                    match keyring.private_config_with_alias(literal, &basic) {
                        Ok(dir) => Some(dir),
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot write the private credentials file for the cache's address; copies to it go anonymous");
                            None
                        }
                    }
                }
                Ok(_) => None,
                Err(failure) => {
                    tracing::warn!(cause = %failure, "cannot read the cache's credentials for its address; copies to it go anonymous");
                    None
                }
            },
            None => None,
        };
        Self {
            client: Client::new(tls.clone(), Arc::clone(&keyring), Arc::clone(&ledger)),
            keyring,
            digest_check,
            crane: find_on_path("crane"),
            skopeo: find_on_path("skopeo"),
            tmpdir: std::env::temp_dir(),
            tls,
            ledger,
            literal_auth,
        }
    }

    /// Repositories this run will check, in the order it will (see [`Client::expect`]).
    pub fn expect<'r>(&self, repositories: impl IntoIterator<Item = &'r Repository>) {
        if let Some(client) = &self.client {
            client.expect(repositories);
        }
    }

    /// image-sync's own registry client, when one could be built.
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// The run's upstream quota ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// crane's path, when found.
    pub fn crane(&self) -> Option<&Path> {
        self.crane.as_deref()
    }

    /// skopeo's path, when found.
    pub fn skopeo(&self) -> Option<&Path> {
        self.skopeo.as_deref()
    }

    /// The TLS policy in force.
    pub fn tls(&self) -> &TlsPolicy {
        &self.tls
    }

    /// Reads the digest of `repository:tag` on `side` within `timeout`, all fallbacks
    /// included: image-sync's own client, else `crane digest` (HEAD), else `skopeo inspect
    /// --raw` (a GET) when crane itself failed.
    pub async fn digest(
        &self,
        repository: &Repository,
        tag: &Tag,
        side: Side,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Attempted<Digest> {
        self.check(repository, tag, side, Want::Digest, timeout, cancel)
            .await
    }

    /// Lists the upstream tags of `repository` with image-sync's own client (paginated,
    /// `page` tags per request), within `timeout`.
    pub async fn list_tags(
        &self,
        repository: &Repository,
        page: u32,
        timeout: Duration,
    ) -> super::client::TagList {
        match &self.client {
            Some(client) => client.list_tags(repository, page, timeout).await,
            None => super::client::TagList {
                tags: Err(Failure::new(
                    Class::Other,
                    "no HTTP client could be built: tags cannot be listed",
                )
                .on(Side::Local, None)),
                requests: 0,
            },
        }
    }

    /// One free HEAD upstream, for the quota headers it carries (never handed to a tool,
    /// never a GET).
    pub async fn read_quota(&self, repository: &Repository, tag: &Tag, timeout: Duration) {
        if let Some(client) = &self.client {
            let _ = client
                .digest(repository, tag, Side::Upstream, timeout, Want::Headers)
                .await;
        }
    }

    /// Reads the digest of a copy in the cache by GETting its manifest (free on the
    /// cache), so that `children` says how many manifests an index lists.
    pub async fn verify(
        &self,
        repository: &Repository,
        tag: &Tag,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Attempted<Digest> {
        self.check(
            repository,
            tag,
            Side::Cache,
            Want::Manifest,
            timeout,
            cancel,
        )
        .await
    }

    async fn check(
        &self,
        repository: &Repository,
        tag: &Tag,
        side: Side,
        want: Want,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Attempted<Digest> {
        let started = Instant::now();
        let budget = Budget::new(timeout);
        let attempted = self
            .digest_by_any_tool(repository, tag, side, want, budget, cancel)
            .await;
        tracing::debug!(
            registry = %repository.host(),
            side = side.as_str(),
            reference = %repository.with_tag(tag),
            tool = attempted.tool.map_or("", Tool::name),
            digest = attempted.outcome.as_ref().map(Digest::text).as_deref().unwrap_or(""),
            // 0: no HTTP status (a transport failure, a tool's own error).
            status = match &attempted.outcome {
                Ok(_) => 200,
                Err(failure) => failure.status.unwrap_or(0),
            },
            gets = attempted.gets,
            ms = started.elapsed().as_millis() as u64,
            "digest check"
        );
        attempted
    }

    async fn digest_by_any_tool(
        &self,
        repository: &Repository,
        tag: &Tag,
        side: Side,
        want: Want,
        budget: Budget,
        cancel: &Cancel,
    ) -> Attempted<Digest> {
        let reference = repository.with_tag(tag);
        let mut tries = 0;
        if let (Some(client), DigestCheck::Builtin) = (&self.client, self.digest_check) {
            tries += 1;
            let mut cancel = cancel.clone();
            let checked = tokio::select! {
                checked = client.digest(repository, tag, side, budget.timeout, want) => checked,
                _ = cancel.wait_for(|cancelled| *cancelled) => {
                    Checked::Failed(Failure::new(Class::Interrupted, format!("HEAD {reference}")))
                }
            };
            match checked {
                Checked::Digest {
                    digest,
                    gets,
                    children,
                } => {
                    return Attempted {
                        gets,
                        children,
                        ..Attempted::new(Some(Tool::Builtin), Ok(digest), tries)
                    };
                }
                Checked::Failed(failure) => {
                    return Attempted::new(Some(Tool::Builtin), Err(failure), tries);
                }
                Checked::Delegate(why) => {
                    tracing::debug!(reference = %reference, why = %why, "digest check handed to crane");
                }
            }
        }
        let ends = match side {
            Side::Cache => Ends {
                upstream: None,
                cache: Some(repository.host()),
                cache_alias: None,
                writes: false,
            },
            _ => Ends {
                upstream: Some(repository.host()),
                cache: None,
                cache_alias: None,
                writes: false,
            },
        };
        if let Some(crane) = &self.crane {
            tries += 1;
            let args =
                crane::digest_args(&reference, self.tls.crane_insecure_for(repository.host()));
            let what = format!("crane digest {reference}");
            let run = Run {
                program: crane,
                args,
                env: Vec::new(),
                what: &what,
                tool: Tool::Crane,
                ends,
                spent: tool_errors::crane_digest_spent,
            };
            let (outcome, spent) = self
                .tool_check(run, repository, side, budget, cancel, crane::parse_digest)
                .await;
            match outcome {
                Ok(digest) => {
                    return Attempted {
                        gets: spent.gets,
                        ..Attempted::new(Some(Tool::Crane), Ok(digest), tries)
                    };
                }
                Err(failure) if !failure.class.worth_fallback() || self.skopeo.is_none() => {
                    return Attempted::new(Some(Tool::Crane), Err(failure), tries);
                }
                Err(failure) => {
                    tracing::warn!(reference = %reference, cause = %failure, "crane failed on this machine; the digest check goes to skopeo (a manifest GET)");
                }
            }
        }
        let Some(skopeo) = &self.skopeo else {
            return no_tool(tries);
        };
        tries += 1;
        let args = skopeo::inspect_args(
            &reference,
            self.tls.skopeo_verifies(repository.host()),
            &self.skopeo_options(),
        );
        let what = format!("skopeo inspect {reference}");
        let run = Run {
            program: skopeo,
            args,
            env: Vec::new(),
            what: &what,
            tool: Tool::Skopeo,
            ends,
            spent: tool_errors::skopeo_inspect_spent,
        };
        let (outcome, spent) = self
            .tool_check(
                run,
                repository,
                side,
                budget,
                cancel,
                skopeo::digest_of_raw_manifest,
            )
            .await;
        Attempted {
            gets: spent.gets,
            ..Attempted::new(Some(Tool::Skopeo), outcome, tries)
        }
    }

    /// Runs a crane or skopeo digest check, counts what it sent upstream, and reads the
    /// digest from what it printed.
    async fn tool_check(
        &self,
        run: Run<'_>,
        repository: &Repository,
        side: Side,
        budget: Budget,
        cancel: &Cancel,
        read: fn(&[u8]) -> Option<Digest>,
    ) -> (Result<Digest, Failure>, Spent) {
        let what = run.what.to_owned();
        let (outcome, spent) = self.run(run, budget, cancel).await;
        self.account_check(repository, side, spent, outcome.as_ref().err());
        let outcome = outcome.and_then(|done| {
            read(&done.stdout).ok_or_else(|| {
                Failure::new(Class::ToolFailed, format!("{what}: printed no digest"))
                    .on(Side::Local, None)
            })
        });
        (outcome, spent)
    }

    /// Counts what a crane or skopeo check sent upstream; a 429 there leaves no quota.
    fn account_check(
        &self,
        repository: &Repository,
        side: Side,
        spent: Spent,
        failure: Option<&Failure>,
    ) {
        if side != Side::Upstream {
            return;
        }
        self.ledger.answered(
            repository.host(),
            Answer {
                rate_limited: failure.is_some_and(|failure| failure.class == Class::RateLimited),
                ..Answer::requests(spent.heads, spent.gets)
            },
        );
    }

    /// One copy of `source@digest` to `target:tag`, every platform, keeping the digest:
    /// with crane, or with skopeo when crane is missing, cannot reach the cache without
    /// weakening TLS towards the upstream, or `previous` (the last attempt's failure)
    /// says crane itself was the problem.
    #[expect(
        clippy::too_many_arguments,
        reason = "one copy's whole description; a struct would only rename them"
    )]
    pub async fn copy(
        &self,
        source: &Repository,
        digest: &Digest,
        target: &Repository,
        tag: &Tag,
        timeout: Duration,
        cancel: &Cancel,
        previous: Option<&Failure>,
    ) -> Attempted<()> {
        let destination = Destination::Tag(tag);
        self.copy_to(
            source,
            digest,
            target,
            destination,
            timeout,
            cancel,
            previous,
        )
        .await
    }

    /// One copy of `source@digest` to `target@digest`, untagged: an artifact that a
    /// referrers API finds by its `subject` (a signature, an SBOM), not by a tag.
    pub async fn copy_by_digest(
        &self,
        source: &Repository,
        digest: &Digest,
        target: &Repository,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Attempted<()> {
        let destination = Destination::Digest(digest);
        self.copy_to(source, digest, target, destination, timeout, cancel, None)
            .await
    }

    /// Lists the referrers of `repository@subject` through the OCI 1.1 referrers API, with
    /// the built-in client (`Unsupported` without it: no tool lists them).
    pub async fn referrers(
        &self,
        repository: &Repository,
        subject: &Digest,
        side: Side,
        timeout: Duration,
    ) -> Listed {
        match &self.client {
            Some(client) => client.referrers(repository, subject, side, timeout).await,
            None => Listed::Unsupported,
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one copy's whole description; a struct would only rename them"
    )]
    async fn copy_to(
        &self,
        source: &Repository,
        digest: &Digest,
        target: &Repository,
        destination: Destination<'_>,
        timeout: Duration,
        cancel: &Cancel,
        previous: Option<&Failure>,
    ) -> Attempted<()> {
        let from = source.with_digest(digest);
        let to = destination.on(target);
        let budget = Budget::new(timeout);
        let ends = Ends {
            upstream: Some(source.host()),
            cache: Some(target.host()),
            cache_alias: None,
            writes: true,
        };
        let route = self.tls.copy_route(source.host(), target.host());
        let crane_failed_here = previous.is_some_and(|failure| failure.class.worth_fallback());
        let crane_route = match (&self.crane, &route) {
            (
                Some(crane),
                CopyRoute::Crane {
                    insecure,
                    destination_host,
                },
            ) if !(crane_failed_here && self.skopeo.is_some()) => {
                Some((crane, *insecure, destination_host))
            }
            _ => None,
        };
        if let Some((crane, insecure, destination_host)) = crane_route {
            let crane_to = destination.on(&Repository::new(destination_host, target.path()));
            let literal = (destination_host != target.host()).then_some(destination_host.as_str());
            let env = match (&self.literal_auth, literal) {
                (Some(dir), Some(_)) => vec![(
                    OsString::from("DOCKER_CONFIG"),
                    dir.path().as_os_str().to_owned(),
                )],
                _ => Vec::new(),
            };
            let what = format!("crane copy {from} {crane_to}");
            let run = Run {
                program: crane,
                args: crane::copy_args(&from, &crane_to, insecure),
                env,
                what: &what,
                tool: Tool::Crane,
                ends: Ends {
                    cache_alias: literal,
                    ..ends
                },
                spent: tool_errors::crane_copy_spent,
            };
            return self.copied(source, Tool::Crane, self.run(run, budget, cancel).await);
        }
        let Some(skopeo) = &self.skopeo else {
            return no_tool(0);
        };
        match previous {
            Some(failure) if crane_failed_here => {
                tracing::warn!(image = %from, cause = %failure, "crane failed on this machine; this attempt copies with skopeo");
            }
            _ if self.crane.is_some() => {
                tracing::debug!(image = %from, "copying with skopeo: crane cannot reach the cache without weakening TLS towards the upstream");
            }
            _ => {}
        }
        let args = skopeo::copy_args(
            &from,
            &to,
            self.tls.skopeo_verifies(source.host()),
            self.tls.skopeo_verifies(target.host()),
            &self.skopeo_options(),
        );
        let what = format!("skopeo copy {from} {to}");
        let run = Run {
            program: skopeo,
            args,
            env: Vec::new(),
            what: &what,
            tool: Tool::Skopeo,
            ends,
            spent: tool_errors::skopeo_copy_spent,
        };
        self.copied(source, Tool::Skopeo, self.run(run, budget, cancel).await)
    }

    /// A copy attempt's outcome with what it spent upstream; a 429 from the upstream
    /// leaves no quota there.
    fn copied(
        &self,
        source: &Repository,
        tool: Tool,
        (outcome, spent): (Result<process::Finished, Failure>, Spent),
    ) -> Attempted<()> {
        if let Err(failure) = &outcome
            && failure.class == Class::RateLimited
            && failure.side == Some(Side::Upstream)
        {
            self.ledger.answered(
                source.host(),
                Answer {
                    rate_limited: true,
                    ..Answer::default()
                },
            );
        }
        Attempted {
            gets: spent.gets,
            children: spent.children,
            ..Attempted::new(Some(tool), outcome.map(drop), 1)
        }
    }

    fn skopeo_options(&self) -> skopeo::SkopeoOptions<'_> {
        skopeo::SkopeoOptions {
            authfile: self.keyring.path(),
            tmpdir: Some(&self.tmpdir),
        }
    }

    /// Runs one tool command until the step's deadline; a non-zero exit becomes a typed
    /// failure read from its stderr.
    async fn run(
        &self,
        run: Run<'_>,
        budget: Budget,
        cancel: &Cancel,
    ) -> (Result<process::Finished, Failure>, Spent) {
        let left = budget.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (
                Err(Failure::timed_out(budget.timeout, run.what)),
                Spent::default(),
            );
        }
        let mut env = run.env;
        if run.tool == Tool::Crane {
            env.extend(crane_go_runtime(|name| std::env::var_os(name).is_some()));
        }
        let spec = CommandSpec {
            program: run.program.to_owned(),
            args: run.args,
            env,
            stdin: None,
            timeout: left,
        };
        let finished = process::run(&spec, cancel).await;
        let spent = match &finished {
            Ok(done) => (run.spent)(&done.stderr, &done.stdout, done.success()),
            Err(_) => Spent::default(),
        };
        let outcome = match finished {
            Ok(done) if done.success() => Ok(done),
            Ok(done) => {
                let line = match run.tool {
                    Tool::Skopeo => tool_errors::skopeo_error_line(&done.stderr),
                    _ => tool_errors::crane_error_line(&done.stderr),
                };
                let exit = ToolExit {
                    code: done.code,
                    line: &line,
                    what: run.what,
                };
                Err(match run.tool {
                    Tool::Skopeo => tool_errors::skopeo_failure(exit, run.ends),
                    _ => tool_errors::crane_failure(exit, run.ends),
                })
            }
            Err(RunError::TimedOut(_)) => {
                let failure = Failure::timed_out(budget.timeout, run.what);
                // A check touches one registry: that one hangs. A copy could hang on either.
                Err(match (run.ends.writes, run.ends.upstream, run.ends.cache) {
                    (false, Some(host), None) => failure.on(Side::Upstream, Some(host)),
                    (false, None, Some(host)) => failure.on(Side::Cache, Some(host)),
                    _ => failure,
                })
            }
            Err(RunError::Interrupted) => Err(Failure::new(Class::Interrupted, run.what)),
            Err(RunError::Spawn(message)) => {
                Err(Failure::new(Class::ToolFailed, message).on(Side::Local, None))
            }
        };
        (outcome, spent)
    }
}

/// One tool command of a step.
struct Run<'a> {
    program: &'a Path,
    args: Vec<String>,
    env: Vec<(OsString, OsString)>,
    what: &'a str,
    tool: Tool,
    ends: Ends<'a>,
    /// Reads from the tool's output what it sent upstream.
    spent: fn(&str, &[u8], bool) -> Spent,
}

/// A step's time: its deadline, and its whole bound (for messages).
#[derive(Debug, Clone, Copy)]
struct Budget {
    deadline: Instant,
    timeout: Duration,
}

impl Budget {
    fn new(timeout: Duration) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            timeout,
        }
    }
}

/// The Go runtime settings crane children get: no garbage collection until the heap
/// reaches 128 MiB. crane streams layers, so its heap stays small and the collector's work
/// is mostly wasted: measured interleaved at N = 100 cold (BENCHMARKS.md), 9 % less CPU
/// with the same wall time, and crane's peak RSS about 18 MB with 32 MiB and 128 MiB
/// layers; `GOMEMLIMIT` bounds it should a copy ever hold more (two concurrent copies
/// stay well inside the CronJob's 512 MiB). `GOMAXPROCS=1` saved less CPU and lengthened
/// the run, so it is not set. Nothing is set when the operator set either variable.
fn crane_go_runtime(inherited: impl Fn(&str) -> bool) -> Vec<(OsString, OsString)> {
    if inherited("GOGC") || inherited("GOMEMLIMIT") {
        return Vec::new();
    }
    [("GOGC", "off"), ("GOMEMLIMIT", "128MiB")]
        .map(|(name, value)| (OsString::from(name), OsString::from(value)))
        .to_vec()
}

/// Neither crane nor skopeo can do the step.
fn no_tool<T>(tries: u32) -> Attempted<T> {
    Attempted::new(
        None,
        Err(
            Failure::new(Class::NoTool, "neither crane nor skopeo is on PATH")
                .on(Side::Local, None),
        ),
        tries,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crane_children_run_without_gc_under_a_memory_limit_unless_the_operator_says_otherwise() {
        assert_eq!(
            crane_go_runtime(|_| false),
            [
                (OsString::from("GOGC"), OsString::from("off")),
                (OsString::from("GOMEMLIMIT"), OsString::from("128MiB"))
            ]
        );
        assert!(crane_go_runtime(|name| name == "GOGC").is_empty());
        assert!(crane_go_runtime(|name| name == "GOMEMLIMIT").is_empty());
    }
}
