//! Coverage in a run (`settings.coverage: cluster`, `--coverage`): the cluster's workloads
//! listed read-only through the in-cluster service account (or `KUBECONFIG`), checked
//! against the whole config with the code of `image-sync discover --against`. A listing
//! that fails makes the coverage unknown (an `error` in the report, a 0 gauge); it never
//! fails the sync.

use std::time::Duration;

use crate::discover::inventory::Inventory;
use crate::input::plan::Plan;
use crate::output::report::CoverageReport;

/// Bound on the whole listing: a slow API server must not hold the run's report back.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// Lists the cluster and checks its images against `plan` (the whole config, before any
/// shard is taken).
pub async fn check(plan: &Plan) -> CoverageReport {
    let listed = tokio::time::timeout(TIMEOUT, async {
        let client = crate::cluster::client::client(None)
            .await
            .map_err(|err| err.to_string())?;
        crate::discover::cluster::list(&client, &[], crate::discover::cluster::DEFAULT_PAGE_SIZE)
            .await
            .map_err(|err| err.to_string())
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "listing the cluster took longer than {} s",
            TIMEOUT.as_secs()
        ))
    });
    match listed {
        Ok(listing) => {
            let inventory = Inventory::from_sightings(listing.sightings);
            let coverage = crate::discover::coverage::check(plan, &inventory);
            let mut uncovered = coverage.uncovered;
            uncovered.extend(coverage.invalid.iter().map(|invalid| invalid.image.clone()));
            if uncovered.is_empty() {
                tracing::info!(
                    images = coverage.images,
                    objects = listing.objects,
                    "coverage: every image the cluster runs is in the config"
                );
            } else {
                tracing::warn!(
                    images = coverage.images,
                    uncovered = ?uncovered,
                    "coverage: the cluster runs images the config does not cache; nodes pull them from the upstream. Add them to `images:` (`image-sync discover --cluster --format config` writes the entries)"
                );
            }
            CoverageReport {
                images: Some(coverage.images),
                uncovered,
                error: None,
            }
        }
        Err(error) => {
            tracing::warn!("coverage unknown: {error}");
            CoverageReport {
                images: None,
                uncovered: Vec::new(),
                error: Some(error),
            }
        }
    }
}
