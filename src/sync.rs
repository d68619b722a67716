//! The fan-out: every image of the plan, under a semaphore of `concurrency` jobs, checked
//! digest-first and copied only when the cache differs. A failed image is data in the
//! report, never an error that stops the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::decision::{Decision, decide};
use crate::failure::{Failure, FailureKind};
use crate::plan::{Job, Plan};
use crate::process::Cancel;
use crate::registry::{Attempted, Tool, Toolbox};
use crate::report::{Action, ImageResult};

/// Syncs every image of the plan; results come back in config order.
pub async fn sync_all(
    plan: &Plan,
    toolbox: &Arc<Toolbox>,
    dry_run: bool,
    cancel: &Cancel,
) -> Vec<ImageResult> {
    let semaphore = Arc::new(Semaphore::new(plan.settings.concurrency));
    let plan_settings = Arc::new(plan.settings.clone());
    let mut results: Vec<Option<ImageResult>> = vec![None; plan.jobs.len()];
    let mut tasks = JoinSet::new();
    let mut task_index = HashMap::new();
    let mut watch = cancel.clone();

    for job in &plan.jobs {
        // Take the permit before spawning, so that jobs start in config order and a
        // cancelled run starts nothing new.
        let permit = tokio::select! {
            permit = semaphore.clone().acquire_owned() => permit,
            _ = watch.wait_for(|cancelled| *cancelled) => break,
        };
        let Ok(permit) = permit else { break };
        if *cancel.borrow() {
            break;
        }
        let (job, toolbox, settings, cancel) = (
            job.clone(),
            Arc::clone(toolbox),
            Arc::clone(&plan_settings),
            cancel.clone(),
        );
        let index = job.index;
        let handle = tasks.spawn(async move {
            let result = sync_image(&job, &toolbox, &settings, dry_run, &cancel).await;
            drop(permit);
            result
        });
        task_index.insert(handle.id(), index);
    }

    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((id, result)) => {
                if let Some(&index) = task_index.get(&id) {
                    results[index] = Some(result);
                }
            }
            Err(err) => {
                if let Some(&index) = task_index.get(&err.id()) {
                    let job = &plan.jobs[index];
                    let failure = Failure::new(
                        FailureKind::Other,
                        format!("internal error: the task for this image {err}"),
                    );
                    tracing::error!(image = %job.image, tag = %job.tag, error = %failure, "image task failed");
                    results[index] = Some(failed(job, None, None, Instant::now(), None, &failure));
                }
            }
        }
    }

    plan.jobs
        .iter()
        .zip(results)
        .map(|(job, result)| {
            result.unwrap_or_else(|| {
                let failure = Failure::new(
                    FailureKind::Interrupted,
                    "the run was stopped before this image started",
                );
                failed(job, None, None, Instant::now(), None, &failure)
            })
        })
        .collect()
}

/// One image: upstream digest, cache digest, decide, copy, verify.
async fn sync_image(
    job: &Job,
    toolbox: &Toolbox,
    settings: &crate::plan::Settings,
    dry_run: bool,
    cancel: &Cancel,
) -> ImageResult {
    let started = Instant::now();
    let check_timeout = settings.check_timeout;

    let Attempted { tool, outcome } = toolbox
        .digest(&job.source, &job.tag, check_timeout, cancel)
        .await;
    let remote = match outcome {
        Ok(digest) => digest,
        Err(failure) => return failed(job, None, None, started, tool, &failure),
    };

    let Attempted { tool, outcome } = toolbox
        .digest(&job.target, &job.tag, check_timeout, cancel)
        .await;
    let cached = match outcome {
        Ok(digest) => Some(digest),
        Err(failure)
            if matches!(
                failure.kind,
                FailureKind::ManifestUnknown | FailureKind::NameUnknown
            ) =>
        {
            None
        }
        Err(failure) => return failed(job, Some(&remote), None, started, tool, &failure),
    };
    let remote_digest = Some(remote.to_string());
    let cached_digest = cached.as_ref().map(ToString::to_string);

    let action = match decide(&remote, cached.as_ref(), dry_run) {
        Decision::AlreadyCached => Action::AlreadyCached,
        Decision::WouldCopy => Action::WouldPull,
        Decision::Copy => {
            let copied = toolbox
                .copy(
                    &job.source,
                    &remote,
                    &job.target,
                    &job.tag,
                    settings.pull_timeout,
                    cancel,
                )
                .await;
            if let Err(failure) = copied.outcome {
                return failed(
                    job,
                    Some(&remote),
                    cached_digest,
                    started,
                    copied.tool,
                    &failure,
                );
            }
            let verified = toolbox
                .digest(&job.target, &job.tag, check_timeout, cancel)
                .await
                .outcome;
            let drift = match verified {
                Ok(now) if now == remote => None,
                Ok(now) => Some(Failure::new(
                    FailureKind::DigestDrift,
                    format!(
                        "the cache holds {now} after copying {remote}: the copy converted the format or kept one platform, or the cache rewrote the manifest (Zot needs http.compat: [\"docker2s2\"])"
                    ),
                )),
                Err(failure) => Some(Failure::new(
                    failure.kind,
                    format!("cannot verify the copy: {}", failure.message),
                )),
            };
            if let Some(failure) = drift {
                return failed(
                    job,
                    Some(&remote),
                    cached_digest,
                    started,
                    copied.tool,
                    &failure,
                );
            }
            return finished(
                job,
                Action::Pulled,
                remote_digest,
                cached_digest,
                started,
                copied.tool,
            );
        }
    };
    finished(job, action, remote_digest, cached_digest, started, tool)
}

fn finished(
    job: &Job,
    action: Action,
    remote_digest: Option<String>,
    cached_digest: Option<String>,
    started: Instant,
    tool: Option<Tool>,
) -> ImageResult {
    let action_name = match action {
        Action::Pulled => "pulled",
        Action::AlreadyCached => "already_cached",
        Action::WouldPull => "would_pull",
        Action::Failed => "failed",
    };
    tracing::info!(
        image = %job.image,
        tag = %job.tag,
        action = action_name,
        digest = remote_digest.as_deref().unwrap_or(""),
        tool = tool.map_or("", Tool::name),
        "image done"
    );
    ImageResult {
        image: job.image.clone(),
        tag: job.tag.to_string(),
        action,
        remote_digest,
        cached_digest,
        duration_ms: elapsed_ms(started),
        error: None,
        tool,
    }
}

fn failed(
    job: &Job,
    remote: Option<&crate::reference::Digest>,
    cached_digest: Option<String>,
    started: Instant,
    tool: Option<Tool>,
    failure: &Failure,
) -> ImageResult {
    tracing::error!(image = %job.image, tag = %job.tag, action = "failed", error = %failure, "image failed");
    ImageResult {
        image: job.image.clone(),
        tag: job.tag.to_string(),
        action: Action::Failed,
        remote_digest: remote.map(ToString::to_string),
        cached_digest,
        duration_ms: elapsed_ms(started),
        error: Some(failure.to_string()),
        tool,
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
