//! One run at a time over the cache (`--lease NAME`): before any registry request, the run
//! takes the Kubernetes Lease NAME (see `cluster::lease`) or, when another run holds it,
//! copies nothing and says so in the report (`lease`), with an exit code a CronJob counts
//! as success. A holder renews the lease in the background until the run ends.

use serde::Serialize;

use crate::cluster::lease::{self, LeaseHandle, Outcome};

/// The environment variable naming this run's holder identity (every shard of one run
/// must name the same one: the Job's uid through the downward API in `k8s/`).
pub const HOLDER_VAR: &str = "IMAGE_SYNC_LEASE_HOLDER";

/// The report's `lease` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseReport {
    /// The Lease's name (in the pod's namespace).
    pub name: String,
    /// This run's holder identity.
    pub holder: String,
    /// What asking for the lease came to.
    pub outcome: LeaseOutcome,
    /// The run holding the lease, when `held`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// Seconds until the other run's lease expires unless renewed, when `held`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<i64>,
    /// Why, when `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `lease.outcome` in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseOutcome {
    /// This run held the lease and synced.
    Acquired,
    /// Another run held it; this run copied nothing (a success for a CronJob).
    Held,
    /// The lease could not be read or written; nothing was copied.
    Error,
}

/// What the run does after asking for the lease.
pub enum Decision {
    /// Sync; the lease is renewed until this is dropped.
    Sync(LeaseReport, Renewal),
    /// Copy nothing (another run holds the lease, or it could not be asked for).
    Skip(LeaseReport),
}

/// The background renewal of a held lease; stops when dropped or finished.
pub struct Renewal {
    task: tokio::task::JoinHandle<()>,
    handle: std::sync::Arc<LeaseHandle>,
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Renewal {
    /// Stops renewing; RELEASE gives the lease up now (an unsharded run: nobody else of
    /// this run still needs it), else it expires after its duration (other shards of the
    /// run may still be copying; they renew it until they end).
    pub async fn finish(self, release: bool) {
        self.task.abort();
        if release && let Err(err) = self.handle.release().await {
            tracing::warn!("cannot release the lease (it expires by itself): {err}");
        }
    }
}

/// This run's holder identity: `IMAGE_SYNC_LEASE_HOLDER`, else the host (pod) name.
pub fn holder_identity() -> String {
    std::env::var(HOLDER_VAR)
        .ok()
        .filter(|value| !value.trim().is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("image-sync-{}", std::process::id()))
}

/// Takes the lease NAME or decides to skip.
pub async fn acquire(name: &str) -> Decision {
    let holder = holder_identity();
    let mut report = LeaseReport {
        name: name.to_owned(),
        holder: holder.clone(),
        outcome: LeaseOutcome::Acquired,
        held_by: None,
        expires_in_secs: None,
        error: None,
    };
    let handle = match LeaseHandle::connect(name, &holder).await {
        Ok(handle) => handle,
        Err(err) => return skip_on_error(report, &err),
    };
    match handle.acquire().await {
        Ok(Outcome::Acquired) => {
            tracing::info!(lease = name, holder = %holder, "lease acquired: this run syncs");
            let handle = std::sync::Arc::new(handle);
            let renewing = std::sync::Arc::clone(&handle);
            let task = tokio::spawn(async move {
                let handle = renewing;
                let mut every =
                    tokio::time::interval(std::time::Duration::from_secs(lease::RENEW_SECS));
                every.tick().await;
                loop {
                    every.tick().await;
                    match handle.acquire().await {
                        Ok(Outcome::Acquired) => {}
                        Ok(Outcome::Held { holder, .. }) => {
                            tracing::warn!(held_by = %holder, "lost the lease (not renewed in time); the run goes on")
                        }
                        Err(err) => tracing::warn!("cannot renew the lease: {err}"),
                    }
                }
            });
            Decision::Sync(report, Renewal { task, handle })
        }
        Ok(Outcome::Held {
            holder: other,
            expires_in_secs,
        }) => {
            tracing::warn!(
                lease = name,
                held_by = %other,
                expires_in_secs,
                "another run holds the cache's lease: this run copies nothing (the next run after it ends syncs)"
            );
            report.outcome = LeaseOutcome::Held;
            report.held_by = Some(other);
            report.expires_in_secs = Some(expires_in_secs);
            Decision::Skip(report)
        }
        Err(err) => skip_on_error(report, &err),
    }
}

fn skip_on_error(mut report: LeaseReport, err: &lease::LeaseError) -> Decision {
    tracing::error!(
        lease = %report.name,
        status = err.status,
        "cannot take the lease, so this run copies nothing: {err} (the ServiceAccount needs get, create and update on leases.coordination.k8s.io in its namespace)"
    );
    report.outcome = LeaseOutcome::Error;
    report.error = Some(err.to_string());
    Decision::Skip(report)
}
