//! The fan-out: every image of the plan, checked digest-first under `check_concurrency`
//! and copied under `concurrency`, only when the cache differs. A failed image is data in
//! the report, never an error that stops the others.
//!
//! Around each step: a circuit breaker per registry (a registry that refuses connections
//! or rate limits us gets no more requests), bounded retries with backoff for transient
//! failures, and the run deadline (past it, nothing new starts: `deferred`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::input::pins::{self, SkippedCheck};
use crate::input::plan::{Job, Plan, Settings};
use crate::input::reference::{Digest, Repository, Tag};
use crate::output::report::{Action, Details, ImageResult};
use crate::output::report::{Digests, ReferrerCounts};
use crate::process::Cancel;
use crate::registry::{Attempted, Class, Failure, Side, Tool, Toolbox};
use crate::run::breaker::Breakers;
use crate::run::decision::{Decision, decide};
use crate::run::platforms;
use crate::run::referrers::Referrers;
use crate::run::retry;

/// What every image task shares.
struct Context {
    toolbox: Arc<Toolbox>,
    settings: Settings,
    dry_run: bool,
    cancel: Cancel,
    copies: Arc<Semaphore>,
    breakers: Arc<Breakers>,
    /// Caches that refused a referrer copy (see [`Referrers::refusals`]).
    referrer_refusals: Breakers,
    deadline: Option<Instant>,
}

impl Context {
    fn past_deadline(&self) -> bool {
        self.deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Why no new work may start now, if it may not.
    fn stop_reason(&self) -> Option<String> {
        if self.cancelled() {
            Some(format!(
                "interrupted by {} before this image was copied",
                signal_name()
            ))
        } else if self.past_deadline() {
            Some(
                "run deadline reached before this image was copied; the next run picks it up"
                    .to_owned(),
            )
        } else {
            None
        }
    }

    /// Runs one step against `hosts`: refused at once when a host's breaker tripped,
    /// attempted again with backoff while the failure allows it (each tool attempt past
    /// the first adds one to `tally.extra`), tripping the breaker of the registry that
    /// refused or rate limited us, or that timed out a digest check on every attempt.
    /// `run` gets the previous attempt's failure (a copy then picks its tool by it).
    async fn step<T, F, Fut>(
        &self,
        hosts: &[&str],
        retry_timeouts: bool,
        tally: &mut Tally,
        mut run: F,
    ) -> Attempted<T>
    where
        F: FnMut(Option<Failure>) -> Fut,
        Fut: Future<Output = Attempted<T>>,
    {
        let mut retry = 0;
        let mut previous = None;
        loop {
            if let Some(skipped) = self.breakers.check(hosts) {
                return Attempted {
                    tool: None,
                    outcome: Err(skipped),
                    tries: 0,
                    gets: 0,
                    children: None,
                };
            }
            let result = run(previous.take()).await;
            tally.extra += result.tries.saturating_sub(1) + u32::from(retry > 0);
            tally.gets += result.gets;
            if result.outcome.is_err() {
                // A failed copy of an index spent a GET on each child it got to.
                tally.gets += result.children.unwrap_or(0);
            }
            let Err(failure) = &result.outcome else {
                return result;
            };
            if failure.class.trips_breaker() {
                self.trip(failure);
                return result;
            }
            let retryable = failure.class.is_retryable()
                && (retry_timeouts || failure.class != Class::TimedOut);
            if !retryable
                || retry >= self.settings.retries
                || self.cancelled()
                || self.past_deadline()
            {
                // A digest check (one small request) that timed out on every attempt means
                // the registry hangs: spare the other images the same wait.
                if retryable && retry_timeouts && failure.class == Class::TimedOut {
                    self.breakers.trip(failure);
                }
                return result;
            }
            // The next attempt changes tool: nothing to wait for.
            if !failure.class.worth_fallback() {
                let wait = retry::backoff(retry, failure.retry_after, retry::jitter());
                tracing::warn!(cause = %failure, retry = retry + 1, wait_ms = wait.as_millis() as u64, "transient failure; retrying");
                let mut cancel = self.cancel.clone();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = cancel.wait_for(|cancelled| *cancelled) => return result,
                }
            }
            retry += 1;
            previous = Some(failure.clone());
        }
    }

    /// One digest check of `repository:tag` on `side`, with the retries of a step.
    async fn check(
        &self,
        repository: &Repository,
        tag: &Tag,
        side: Side,
        tally: &mut Tally,
    ) -> Attempted<Digest> {
        let hosts = [repository.host()];
        self.step(&hosts, true, tally, |_| {
            self.toolbox.digest(
                repository,
                tag,
                side,
                self.settings.check_timeout,
                &self.cancel,
            )
        })
        .await
    }

    fn trip(&self, failure: &Failure) {
        if let Some(host) = self.breakers.trip(failure) {
            let role = if failure.side == Some(Side::Cache) {
                "cache registry"
            } else {
                "registry"
            };
            tracing::error!(registry = %host, cause = %failure, "{role} refuses requests: no more requests go to it in this run");
        }
    }
}

/// What the steps of one image cost beyond a single attempt each.
#[derive(Debug, Default)]
struct Tally {
    /// Tool attempts past the first of each step (retries and fallbacks).
    extra: u32,
    /// Manifest GETs the checks sent.
    gets: u32,
}

/// Syncs every image of the plan; results come back in config order.
pub async fn sync_all(
    plan: &Plan,
    toolbox: &Arc<Toolbox>,
    dry_run: bool,
    cancel: &Cancel,
    limits: &crate::run::tag_listing::Limits,
) -> Vec<ImageResult> {
    let context = Arc::new(Context {
        toolbox: Arc::clone(toolbox),
        settings: plan.settings.clone(),
        dry_run,
        cancel: cancel.clone(),
        copies: Arc::new(Semaphore::new(plan.settings.concurrency)),
        breakers: Arc::clone(&limits.breakers),
        referrer_refusals: Breakers::default(),
        deadline: limits.deadline,
    });
    preflight(plan, &context).await;
    let checks = Arc::new(Semaphore::new(plan.settings.check_concurrency));
    let mut results: Vec<Option<ImageResult>> = vec![None; plan.jobs.len()];
    let mut tasks = JoinSet::new();
    let mut task_index = HashMap::new();
    let mut watch = cancel.clone();

    // Results are kept by position in `plan.jobs`, which a shard (or tag selection) makes
    // differ from `job.index`, the position in the config.
    for (position, job) in plan.jobs.iter().enumerate() {
        // Take the check permit before spawning, so that images start in config order and
        // a stopped run starts nothing new. Finished tasks are joined meanwhile: a finished
        // image keeps its result only, not its task (sized for the whole `sync_image`).
        let permit = loop {
            tokio::select! {
                biased;
                Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    store(plan, &mut results, &mut task_index, joined);
                }
                permit = Arc::clone(&checks).acquire_owned() => break Some(permit),
                _ = watch.wait_for(|cancelled| *cancelled) => break None,
            }
        };
        let Some(Ok(permit)) = permit else { break };
        if context.cancelled() || context.past_deadline() {
            break;
        }
        let (job, context) = (job.clone(), Arc::clone(&context));
        let handle = tasks.spawn(async move { sync_image(&job, &context, permit).await });
        task_index.insert(handle.id(), position);
    }

    while let Some(joined) = tasks.join_next_with_id().await {
        store(plan, &mut results, &mut task_index, joined);
    }

    let not_started = if context.cancelled() {
        format!("interrupted by {} before this image started", signal_name())
    } else {
        "run deadline reached before this image started; the next run picks it up".to_owned()
    };
    // Collected in place (same allocation): no second list of results.
    results
        .into_iter()
        .enumerate()
        .map(|(position, result)| {
            result.unwrap_or_else(|| Outcome::new(&plan.jobs[position]).deferred(&not_started))
        })
        .collect()
}

/// Puts a joined task's result at its image's position.
fn store(
    plan: &Plan,
    results: &mut [Option<ImageResult>],
    task_index: &mut HashMap<tokio::task::Id, usize>,
    joined: Result<(tokio::task::Id, ImageResult), tokio::task::JoinError>,
) {
    match joined {
        Ok((id, result)) => {
            if let Some(index) = task_index.remove(&id) {
                results[index] = Some(result);
            }
        }
        Err(err) => {
            if let Some(index) = task_index.remove(&err.id()) {
                let failure = Failure::new(
                    Class::Other,
                    format!("internal error: the task for this image {err}"),
                );
                results[index] = Some(Outcome::new(&plan.jobs[index]).failed(None, &failure));
            }
        }
    }
}

/// One digest check of the cache before the fan-out: a cache that is down (refuses, hangs
/// or rate limits) trips its breaker, so that every image fails at once with that one
/// cause instead of each spending upstream requests and timeouts first.
async fn preflight(plan: &Plan, context: &Context) {
    let Some(first) = plan.jobs.first() else {
        return;
    };
    let probe = context
        .toolbox
        .digest(
            &first.target,
            &first.tag,
            Side::Cache,
            context.settings.check_timeout,
            &context.cancel,
        )
        .await;
    if let Err(failure) = probe.outcome
        && (failure.class.trips_breaker() || failure.class == Class::TimedOut)
    {
        context.breakers.trip(&failure);
        tracing::error!(
            registry = %first.target.host(),
            cause = %failure,
            "the cache registry is down: every image fails with this cause"
        );
    }
}

/// One free HEAD per metered upstream registry this run copied from, so that the report's
/// `remaining_at_end` is what the registry says after the last pull.
/// The HEAD goes to an image copied in this run (its tag surely exists upstream).
pub async fn refresh_quota(
    plan: &Plan,
    results: &[ImageResult],
    toolbox: &Toolbox,
    cancel: &Cancel,
) {
    for registry in toolbox.ledger().to_refresh() {
        let copied =
            plan.jobs.iter().zip(results).find(|(job, result)| {
                job.source.host() == registry && result.action == Action::Pulled
            });
        let any = plan.jobs.iter().find(|job| job.source.host() == registry);
        if let Some(job) = copied.map(|(job, _)| job).or(any) {
            let mut cancelled = cancel.clone();
            tokio::select! {
                () = toolbox.read_quota(&job.source, &job.tag, plan.settings.check_timeout) => {}
                _ = cancelled.wait_for(|cancelled| *cancelled) => return,
            }
        }
    }
}

/// One image: upstream digest, cache digest, decide, copy, verify.
async fn sync_image(
    job: &Job,
    context: &Context,
    check_permit: OwnedSemaphorePermit,
) -> ImageResult {
    let mut outcome = Outcome::new(job);
    let (source_host, cache_host) = (job.source.host(), job.target.host());
    // A dead cache fails every image; checking it first spares the upstream a request. A
    // pinned image, or an immutable tag outside a dry run, may be decided by the cache
    // alone: a dead upstream fails it only if it needs the upstream (each step checks).
    let cache_decides = job.pin.is_some() || (job.immutable && !context.dry_run);
    let hosts: &[&str] = if cache_decides {
        &[cache_host]
    } else {
        &[cache_host, source_host]
    };
    if let Some(skipped) = context.breakers.check(hosts) {
        return outcome.failed(None, &skipped);
    }
    if let Some(pin) = &job.pin {
        return sync_pinned(job, context, check_permit, pin, outcome).await;
    }

    // An immutable tag the cache has is taken as it is, without asking the upstream. A dry
    // run checks it anyway, to show what a re-pushed tag would change.
    let mut cache_tally = Tally::default();
    let mut known_cache = None;
    if job.immutable && !context.dry_run {
        let cache = context
            .check(&job.target, &job.tag, Side::Cache, &mut cache_tally)
            .await;
        outcome.attempts += cache_tally.extra;
        outcome.tool = cache.tool;
        match cached_digest(cache.outcome) {
            Ok(Some(digest)) => {
                outcome.cached = Some(digest);
                outcome.skipped_check = Some(SkippedCheck::Immutable);
                return outcome.finished(Action::AlreadyCached);
            }
            Ok(None) => known_cache = Some(cache.tool),
            Err(failure) => return outcome.failed(cache.tool, &failure),
        }
        cache_tally = Tally::default();
    }

    // Both digests at once: they are independent reads, and the image's check then costs
    // the slower of the two round trips, not their sum.
    let mut upstream_tally = Tally::default();
    let (upstream, cache) = tokio::join!(
        context.check(&job.source, &job.tag, Side::Upstream, &mut upstream_tally),
        async {
            match known_cache {
                Some(_) => None,
                None => Some(
                    context
                        .check(&job.target, &job.tag, Side::Cache, &mut cache_tally)
                        .await,
                ),
            }
        },
    );
    outcome.attempts += upstream_tally.extra + cache_tally.extra;
    // Only upstream GETs spend quota; the cache's are free.
    outcome.check_gets += upstream_tally.gets;
    let remote = match upstream.outcome {
        Ok(digest) => digest,
        Err(failure) => return outcome.failed(upstream.tool, &failure),
    };
    outcome.remote = Some(remote.clone());
    if let Some(cache) = cache {
        outcome.tool = cache.tool;
        outcome.cached = match cached_digest(cache.outcome) {
            Ok(digest) => digest,
            Err(failure) => return outcome.failed(cache.tool, &failure),
        };
    } else {
        outcome.tool = upstream.tool;
    }
    drop(check_permit);

    let cached = filtered_cache(job, context, &mut outcome, &remote).await;
    match decide(&remote, cached.as_ref(), context.dry_run) {
        Decision::AlreadyCached => {
            with_referrers(job, context, outcome, &remote, Action::AlreadyCached).await
        }
        Decision::WouldCopy => outcome.finished(Action::WouldPull),
        Decision::Copy => copy_and_verify(job, context, outcome, &remote).await,
    }
}

/// The cache's digest as the decision sees it: with a platform filter, a cached index
/// image-sync filtered from `remote` with the same filter counts as `remote` (its own
/// digest differs by design; its annotations say what it was made from). One cache GET
/// (free), only when a filter applies and the digests differ.
async fn filtered_cache(
    job: &Job,
    context: &Context,
    outcome: &mut Outcome<'_>,
    remote: &Digest,
) -> Option<Digest> {
    let cached = outcome.cached.clone()?;
    let Some(wanted) = &job.platforms else {
        return Some(cached);
    };
    if cached == *remote {
        return Some(cached);
    }
    let client = context.toolbox.client()?;
    let fetched = client
        .get_manifest(
            &job.target,
            &cached.text(),
            Side::Cache,
            context.settings.check_timeout,
        )
        .await;
    let recorded = match fetched {
        Ok(Some(fetched)) => {
            platforms::recorded(&fetched.bytes).map(|recorded| (recorded, fetched.bytes))
        }
        Ok(None) => None,
        Err(failure) => {
            tracing::debug!(image = %job.image, tag = %job.tag, cause = %failure, "cannot read the cached index's annotations; copying");
            None
        }
    };
    match recorded {
        Some((recorded, bytes))
            if recorded.upstream == *remote
                && recorded.filter == crate::input::platforms::describe(wanted) =>
        {
            outcome.children = platforms::children(&bytes);
            outcome.filtered = Some(cached);
            outcome.platforms = Some(recorded.kept);
            Some(remote.clone())
        }
        _ => Some(cached),
    }
}

/// The cache's digest for a tag: `None` when the cache does not have it (a missing tag or
/// repository is an answer there, not a failure).
fn cached_digest(checked: Result<Digest, Failure>) -> Result<Option<Digest>, Failure> {
    match checked {
        Ok(digest) => Ok(Some(digest)),
        Err(failure) if matches!(failure.class, Class::ManifestUnknown | Class::NameUnknown) => {
            Ok(None)
        }
        Err(failure) => Err(failure),
    }
}

/// A pinned image: the cache's tag must hold exactly `pin`. The upstream is asked only to
/// watch the tag (one HEAD, unless `watch_tag: false`), and for the copy when the cache
/// differs; a tag that moved upstream is reported, never followed.
async fn sync_pinned(
    job: &Job,
    context: &Context,
    check_permit: OwnedSemaphorePermit,
    pin: &Digest,
    mut outcome: Outcome<'_>,
) -> ImageResult {
    let (mut upstream_tally, mut cache_tally) = (Tally::default(), Tally::default());
    let (upstream, cache) = tokio::join!(
        async {
            if job.watch_tag {
                Some(
                    context
                        .check(&job.source, &job.tag, Side::Upstream, &mut upstream_tally)
                        .await,
                )
            } else {
                None
            }
        },
        context.check(&job.target, &job.tag, Side::Cache, &mut cache_tally),
    );
    outcome.attempts += upstream_tally.extra + cache_tally.extra;
    outcome.check_gets += upstream_tally.gets;
    outcome.remote = Some(pin.clone());
    outcome.tool = cache.tool;
    outcome.cached = match cached_digest(cache.outcome) {
        Ok(digest) => digest,
        Err(failure) => return outcome.failed(cache.tool, &failure),
    };
    match upstream.map(|watched| watched.outcome) {
        None => outcome.skipped_check = Some(SkippedCheck::Pinned),
        Some(Ok(digest)) => {
            let moved = pins::moved(pin, Some(&digest)).is_some();
            if moved {
                tracing::warn!(
                    image = %job.image,
                    tag = %job.tag,
                    pinned = %pin,
                    upstream_digest = %digest,
                    "the upstream tag moved away from the pinned digest; the pin is kept"
                );
            }
            outcome.tag_moved = Some(moved);
            outcome.upstream = Some(digest);
        }
        // Watching is advisory: the pin decides, so a failed watch fails nothing.
        Some(Err(failure)) => {
            tracing::warn!(image = %job.image, tag = %job.tag, cause = %failure, "cannot watch the upstream tag of a pinned image; the pin is kept");
        }
    }
    drop(check_permit);
    // A pin is decided like any image, with the pin as the upstream digest.
    let cached = filtered_cache(job, context, &mut outcome, pin).await;
    match decide(pin, cached.as_ref(), context.dry_run) {
        Decision::AlreadyCached => {
            with_referrers(job, context, outcome, pin, Action::AlreadyCached).await
        }
        Decision::WouldCopy => outcome.finished(Action::WouldPull),
        Decision::Copy => copy_and_verify(job, context, outcome, pin).await,
    }
}

async fn copy_and_verify(
    job: &Job,
    context: &Context,
    mut outcome: Outcome<'_>,
    remote: &Digest,
) -> ImageResult {
    if let Some(reason) = context.stop_reason() {
        return outcome.deferred(&reason);
    }
    let mut cancel = context.cancel.clone();
    let permit = tokio::select! {
        permit = Arc::clone(&context.copies).acquire_owned() => permit,
        _ = cancel.wait_for(|cancelled| *cancelled) => return outcome.deferred(&context.stop_reason().unwrap_or_default()),
    };
    let Ok(permit) = permit else {
        return outcome.deferred("the copy queue closed");
    };
    if let Some(reason) = context.stop_reason() {
        return outcome.deferred(&reason);
    }
    let toolbox = &context.toolbox;
    let ticket = match toolbox.ledger().admit(job.source.host()) {
        Ok(ticket) => ticket,
        Err(deferral) => return outcome.held_back(&deferral.to_string()),
    };
    let hosts = [job.source.host(), job.target.host()];
    let pull_timeout = context.settings.pull_timeout;
    // GETs a filtered copy spent before finding no index to filter (counted already).
    let mut filter_gets = 0;
    if let Some(wanted) = &job.platforms {
        let copy = platforms::Copy {
            toolbox: &context.toolbox,
            source: &job.source,
            target: &job.target,
            tag: &job.tag,
            wanted,
            pull_timeout,
            check_timeout: context.settings.check_timeout,
            cancel: &context.cancel,
        };
        let mut tally = Tally::default();
        let copied = context
            .step(&hosts, false, &mut tally, |_| copy.run(remote))
            .await;
        outcome.attempts += tally.extra;
        match copied.outcome {
            Ok(None) => filter_gets = tally.gets,
            Ok(Some(done)) => {
                toolbox.ledger().settle_counted(ticket, tally.gets);
                outcome.tool = copied.tool;
                return verify_filtered(job, context, outcome, remote, done, permit).await;
            }
            Err(failure) => {
                toolbox.ledger().settle_counted(ticket, tally.gets);
                return outcome.failed(copied.tool, &failure);
            }
        }
    }
    let mut tally = Tally::default();
    let copied = context
        .step(&hosts, false, &mut tally, |previous| async move {
            toolbox
                .copy(
                    &job.source,
                    remote,
                    &job.target,
                    &job.tag,
                    pull_timeout,
                    &context.cancel,
                    previous.as_ref(),
                )
                .await
        })
        .await;
    outcome.attempts += tally.extra;
    outcome.tool = copied.tool;
    let spent_before_verification = tally.gets;
    let settle = |children: u32| {
        let gets = spent_before_verification + children;
        toolbox.ledger().answered(
            job.source.host(),
            crate::registry::quota::Answer {
                gets,
                ..Default::default()
            },
        );
        toolbox.ledger().settle_counted(ticket, gets + filter_gets);
    };
    if let Err(failure) = copied.outcome {
        settle(0);
        let failure = match &job.pin {
            Some(pin)
                if matches!(failure.class, Class::ManifestUnknown | Class::NameUnknown)
                    && failure.side != Some(Side::Cache) =>
            {
                let cause = failure.class.cause();
                let detail = failure
                    .message
                    .strip_prefix(&format!("{cause}: "))
                    .unwrap_or(&failure.message);
                Failure {
                    message: format!(
                        "{cause}: the pinned digest {pin} is not in {} (a wrong pin, or the upstream deleted it): {detail}",
                        job.source
                    ),
                    ..failure.clone()
                }
            }
            _ => failure,
        };
        return outcome.failed(copied.tool, &failure);
    }
    let verified = verify_written(job, context, &mut outcome).await;
    // Every child of an index was one GET upstream; the copy in the cache lists them.
    settle(verified.children.or(copied.children).unwrap_or_default());
    let drift = match verified.outcome {
        Ok(now) if now == *remote => None,
        Ok(now) => Some(Failure::new(
            Class::DigestDrift,
            format!(
                "the cache holds {now} after copying {remote}: the copy converted the format or kept one platform, or the cache rewrote the manifest"
            ),
        )),
        Err(failure) if failure.class == Class::DigestDrift => Some(failure),
        Err(failure) => Some(unverified(failure)),
    };
    // Referrer copies take permits of their own.
    drop(permit);
    match drift {
        Some(failure) => outcome.failed(copied.tool, &failure),
        None => with_referrers(job, context, outcome, remote, Action::Pulled).await,
    }
}

/// After a filtered copy: the cache's tag must hold the index just written (a free cache
/// GET), then the referrers follow as for any copy.
async fn verify_filtered(
    job: &Job,
    context: &Context,
    mut outcome: Outcome<'_>,
    remote: &Digest,
    done: platforms::Copied,
    permit: OwnedSemaphorePermit,
) -> ImageResult {
    let verified = verify_written(job, context, &mut outcome).await;
    drop(permit);
    outcome.platforms = Some(done.kept);
    outcome.children = done.children;
    if done.changed {
        outcome.filtered = Some(done.digest.clone());
    }
    match verified.outcome {
        Ok(now) if now == done.digest => {
            with_referrers(job, context, outcome, remote, Action::Pulled).await
        }
        Ok(now) => outcome.failed(
            verified.tool,
            &Failure::new(
                Class::DigestDrift,
                format!(
                    "the cache holds {now} after writing the filtered index {}: the cache rewrote it, or another writer moved the tag",
                    done.digest
                ),
            )
            .on(Side::Cache, Some(job.target.host())),
        ),
        Err(failure) => outcome.failed(verified.tool, &unverified(failure)),
    }
}

/// What the cache's tag holds after a write (a free cache request, retried as a step).
async fn verify_written(
    job: &Job,
    context: &Context,
    outcome: &mut Outcome<'_>,
) -> Attempted<Digest> {
    let mut tally = Tally::default();
    let verified = context
        .step(&[job.target.host()], true, &mut tally, |_| {
            context.toolbox.verify(
                &job.target,
                &job.tag,
                context.settings.check_timeout,
                &context.cancel,
            )
        })
        .await;
    outcome.attempts += tally.extra;
    verified
}

/// A write whose result could not be read back.
fn unverified(failure: Failure) -> Failure {
    Failure {
        message: format!("cannot verify the copy: {}", failure.message),
        ..failure
    }
}

/// Finishes an image that is in the cache: first its signatures, attestations and SBOMs
/// when the job asks for them (see [`crate::run::referrers`]). Their failures fail the image
/// only with `settings.referrers_required`.
async fn with_referrers(
    job: &Job,
    context: &Context,
    mut outcome: Outcome<'_>,
    remote: &Digest,
    action: Action,
) -> ImageResult {
    if !job.referrers || context.dry_run {
        return outcome.finished(action);
    }
    let referrers = Referrers {
        toolbox: &context.toolbox,
        check_timeout: context.settings.check_timeout,
        pull_timeout: context.settings.pull_timeout,
        cancel: &context.cancel,
        copies: &context.copies,
        breakers: &context.breakers,
        refusals: &context.referrer_refusals,
        per_image: context.settings.referrers_per_image,
    };
    let mut synced = referrers.sync(&job.source, &job.target, remote).await;
    // A filtered index is not the upstream's: signatures of the upstream index digest are
    // kept (above), and so are those of each kept child, which pods may name.
    for child in std::mem::take(&mut outcome.children) {
        let more = referrers.sync(&job.source, &job.target, &child).await;
        synced.counts.copied += more.counts.copied;
        synced.counts.already_cached += more.counts.already_cached;
        synced.counts.failed += more.counts.failed;
        synced.check_gets += more.check_gets;
        synced.failure = synced.failure.or(more.failure);
    }
    let (counts, failure) = (synced.counts, synced.failure);
    outcome.referrers = Some(counts);
    outcome.check_gets += synced.check_gets;
    match failure {
        Some(failure) if context.settings.referrers_required => outcome.failed(
            None,
            &Failure {
                message: format!(
                    "{}; while syncing the image's signatures, attestations and SBOMs (settings.referrers_required: true)",
                    failure.message
                ),
                ..failure
            },
        ),
        Some(failure) => {
            tracing::warn!(image = %job.image, tag = %job.tag, cause = %failure, failed = counts.failed, "referrers not synced (settings.referrers_required is false: the image still counts as synced)");
            outcome.finished(action)
        }
        None => outcome.finished(action),
    }
}

/// What is known about one image so far; turned into its report line.
struct Outcome<'a> {
    job: &'a Job,
    started: Instant,
    attempts: u32,
    check_gets: u32,
    remote: Option<Digest>,
    cached: Option<Digest>,
    tool: Option<Tool>,
    referrers: Option<ReferrerCounts>,
    /// A pinned image's watched upstream tag: its digest, and whether it left the pin.
    upstream: Option<Digest>,
    tag_moved: Option<bool>,
    skipped_check: Option<SkippedCheck>,
    /// With a platform filter: the filtered index's digest in the cache, and the platforms
    /// it holds.
    filtered: Option<Digest>,
    platforms: Option<Vec<String>>,
    /// The kept children of a filtered index: their referrers are synced too.
    children: Vec<Digest>,
}

impl<'a> Outcome<'a> {
    fn new(job: &'a Job) -> Self {
        Self {
            job,
            started: Instant::now(),
            attempts: 1,
            check_gets: 0,
            remote: None,
            cached: None,
            tool: None,
            referrers: None,
            upstream: None,
            tag_moved: None,
            skipped_check: None,
            filtered: None,
            platforms: None,
            children: Vec::new(),
        }
    }

    fn finished(self, action: Action) -> ImageResult {
        tracing::info!(
            image = %self.job.image,
            tag = %self.job.tag,
            action = action.as_str(),
            digest = self.remote.as_ref().map(Digest::text).as_deref().unwrap_or(""),
            tool = self.tool.map_or("", Tool::name),
            "image done"
        );
        self.into_result(action, None, None)
    }

    fn failed(mut self, tool: Option<Tool>, failure: &Failure) -> ImageResult {
        self.tool = tool.or(self.tool);
        tracing::error!(image = %self.job.image, tag = %self.job.tag, action = "failed", error = %failure, "image failed");
        self.into_result(
            Action::Failed,
            Some(failure.to_string()),
            Some(failure.clone()),
        )
    }

    /// Not started, for a reason that is the whole error (`quota reserve: ...`).
    fn held_back(self, error: &str) -> ImageResult {
        tracing::warn!(image = %self.job.image, tag = %self.job.tag, action = "deferred", error, "image deferred");
        self.into_result(Action::Deferred, Some(error.to_owned()), None)
    }

    fn deferred(self, reason: &str) -> ImageResult {
        tracing::warn!(image = %self.job.image, tag = %self.job.tag, action = "deferred", reason, "image deferred");
        self.into_result(Action::Deferred, Some(format!("deferred: {reason}")), None)
    }

    fn into_result(
        self,
        action: Action,
        error: Option<String>,
        failure: Option<Failure>,
    ) -> ImageResult {
        ImageResult {
            image: self.job.image.clone(),
            tag: self.job.tag.shared(),
            action,
            digests: Digests::new(self.remote, self.cached),
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            tool: self.tool,
            attempts: self.attempts,
            check_gets: self.check_gets,
            skipped_check: self.skipped_check,
            selected_by: self.job.selected_by.clone(),
            details: Details::of(Details {
                error,
                failure,
                referrers: self.referrers,
                tag_moved: self.tag_moved,
                upstream_digest: self.upstream,
                filtered_digest: self.filtered,
                platforms: self.platforms,
            }),
        }
    }
}

fn signal_name() -> &'static str {
    match crate::run::signals::interrupted_exit_code() {
        Some(crate::output::exit::INTERRUPTED) => "SIGINT",
        _ => "SIGTERM",
    }
}
