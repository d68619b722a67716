//! `image-sync prune`: deletes from the cache the tags image-sync itself wrote (see
//! [`records`]) that the config no longer lists, and nothing else ([`decide`] holds the
//! rules). A dry run by default; `--apply` deletes; above `--max-deletions` nothing is
//! deleted and the exit code is 1, so that a truncated config cannot empty the cache.
//!
//! How the cache deletes is asked, without deleting anything, by two probes in the records
//! repository: a DELETE of a tag that does not exist (404 on a registry that deletes tags,
//! such as Zot; 400 `DIGEST_INVALID` on Distribution 2.8) and of a digest that does not
//! exist (404, or 405 `UNSUPPORTED` when deletes are disabled).

pub mod decide;
pub mod records;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::input::plan::Plan;
use crate::input::reference::Repository;
use crate::output::exit;
use crate::output::prune_report::{Kept, PruneReport};
use crate::registry::client::{Client, Deleted};
use crate::registry::{Class, Failure, Side};
use decide::{Contents, Deletes, Inputs, Target};

/// The default of `--max-deletions`.
pub const DEFAULT_MAX_DELETIONS: u32 = 50;

/// The tag the tag-delete probe asks to delete (never written by anyone).
const PROBE_TAG: &str = "image-sync-delete-probe";

/// What prune was asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Delete (else only report).
    pub apply: bool,
    /// Above this many tags to delete, nothing is deleted.
    pub max_deletions: u32,
}

fn reference(plan: &Plan, repository: &str, tag: &str) -> String {
    format!("{}/{repository}:{tag}", plan.cache_host)
}

/// Runs prune; the report and the exit code.
pub async fn run(plan: &Plan, client: &Client, options: Options) -> (PruneReport, u8) {
    let mut report = PruneReport::default();
    match prune(plan, client, options, &mut report).await {
        Ok(code) => (report, code),
        Err(failure) => {
            tracing::error!(cause = %failure, "prune stopped; nothing more is deleted");
            report.error = Some(failure.to_string());
            (report, exit::IMAGES_FAILED)
        }
    }
}

async fn prune(
    plan: &Plan,
    client: &Client,
    options: Options,
    report: &mut PruneReport,
) -> Result<u8, Failure> {
    let budget = plan.settings.check_timeout;
    let records_repo = records::repository(plan);
    let read = records::read(client, &records_repo, budget).await?;
    let mut inputs = Inputs::default();
    for job in &plan.jobs {
        inputs
            .listed
            .insert((job.target.path().to_owned(), job.tag.to_string()));
    }
    for selection in &plan.selections {
        inputs
            .ruled
            .insert(selection.template.target.path().to_owned());
    }
    for entry in read.iter().flat_map(|record| &record.entries) {
        inputs
            .written
            .entry((entry.repository.clone(), entry.tag.clone()))
            .or_default()
            .insert(entry.digest.clone());
    }
    // Only repositories with a recorded tag that may go need looking at.
    let repositories: BTreeSet<&String> = inputs
        .written
        .keys()
        .filter(|key| !inputs.listed.contains(*key) && !inputs.ruled.contains(&key.0))
        .map(|(repository, _)| repository)
        .collect();
    let mut cache = BTreeMap::new();
    for repository in repositories {
        let contents = contents(
            client,
            &Repository::new(&plan.cache_host, repository),
            budget,
        )
        .await?;
        cache.insert(repository.clone(), contents);
    }
    inputs.cache = cache;
    inputs.deletes = deletes(client, &records_repo, budget).await?;
    report.deletes = Some(match inputs.deletes {
        Deletes::ByTag => "tag",
        Deletes::ByDigest => "digest",
        Deletes::Disabled => "disabled",
    });
    let decision = decide::decide(&inputs);
    report.kept = decision
        .kept
        .iter()
        .map(|((repository, tag), why)| Kept {
            image: reference(plan, repository, tag),
            why: why.clone(),
        })
        .collect();
    for deletion in &decision.delete {
        for tag in deletion.tags() {
            report
                .would_delete
                .push(reference(plan, &deletion.repository, tag));
        }
    }
    let count = decision.deleted_tags();
    if count > options.max_deletions as usize {
        report.error = Some(format!(
            "{count} tags would be deleted, more than --max-deletions {}: nothing deleted (a truncated config must not empty the cache; raise the limit if this is meant)",
            options.max_deletions
        ));
        tracing::error!("{}", report.error.as_deref().unwrap_or_default());
        return Ok(exit::IMAGES_FAILED);
    }
    if !options.apply {
        tracing::info!(
            would_delete = count,
            "dry run: nothing deleted (add --apply to delete)"
        );
        return Ok(exit::SUCCESS);
    }
    let mut failed = None;
    let mut removed: BTreeSet<(String, String)> = BTreeSet::new();
    for deletion in &decision.delete {
        let repository = Repository::new(&plan.cache_host, &deletion.repository);
        match apply(client, &repository, &deletion.target, budget).await {
            Ok(true) => {
                for tag in deletion.tags() {
                    tracing::info!(image = %reference(plan, &deletion.repository, tag), "deleted");
                    report
                        .deleted
                        .push(reference(plan, &deletion.repository, tag));
                    removed.insert((deletion.repository.clone(), tag.to_owned()));
                }
            }
            Ok(false) => {
                for tag in deletion.tags() {
                    report.kept.push(Kept {
                        image: reference(plan, &deletion.repository, tag),
                        why: "the tag changed while prune ran; left alone".to_owned(),
                    });
                }
            }
            Err(failure) => {
                tracing::error!(repository = %repository, cause = %failure, "cannot delete");
                failed.get_or_insert(failure);
            }
        }
    }
    // Compaction: one merged record of what is still image-sync's, then the records read.
    let kept_entries: Vec<records::Entry> = read
        .iter()
        .flat_map(|record| record.entries.iter())
        .filter(|entry| {
            let key = (entry.repository.clone(), entry.tag.clone());
            !removed.contains(&key)
                && inputs
                    .cache
                    .get(&entry.repository)
                    .is_none_or(|contents| contents.tags.contains_key(&entry.tag))
        })
        .cloned()
        .collect();
    let compact = read.len() > 1 || !removed.is_empty();
    if compact
        && let Err(failure) =
            records::replace(client, &records_repo, &read, &kept_entries, "prune", budget).await
    {
        tracing::warn!(cause = %failure, "cannot write the merged record; the records are kept as they are");
    }
    report.kept.sort_by(|a, b| a.image.cmp(&b.image));
    match failed {
        Some(failure) => Err(failure),
        None => Ok(exit::SUCCESS),
    }
}

/// One deletion; `false` when a tag no longer holds the digest about to be deleted.
async fn apply(
    client: &Client,
    repository: &Repository,
    target: &Target,
    budget: Duration,
) -> Result<bool, Failure> {
    let reference = match target {
        Target::Tag(tag) => tag.clone(),
        Target::Digest { digest, tags } => {
            // The decision is a snapshot: a tag moved since must not lose its new digest's
            // neighbours. Every tag it removes still holds the digest, else nothing.
            for tag in tags {
                let head = client
                    .head_manifest(repository, tag, Side::Cache, budget)
                    .await?;
                if head.is_none_or(|head| *head.digest.text() != *digest) {
                    return Ok(false);
                }
            }
            digest.clone()
        }
    };
    match client
        .delete_manifest(repository, &reference, budget)
        .await?
    {
        Deleted::Deleted | Deleted::Missing => Ok(true),
        Deleted::Unsupported { status, code } => Err(Failure::new(
            Class::WriteRefused,
            format!(
                "DELETE {repository}/manifests/{reference}: {status} {}",
                code.unwrap_or_default()
            ),
        )
        .on(Side::Cache, Some(repository.host()))
        .status(Some(status))),
    }
}

/// Every tag of a cache repository, its digest, and the children of those that are
/// indexes (cache requests are free).
async fn contents(
    client: &Client,
    repository: &Repository,
    budget: Duration,
) -> Result<Contents, Failure> {
    let tags = records::cache_tags(client, repository, budget).await?;
    let mut contents = Contents::default();
    for tag in tags {
        let Some(head) = client
            .head_manifest(repository, &tag, Side::Cache, budget)
            .await?
        else {
            continue;
        };
        if crate::run::platforms::is_index(&head.media_type)
            && !contents.children.contains_key(&*head.digest.text())
            && let Some(fetched) = client
                .get_manifest(repository, &head.digest.text(), Side::Cache, budget)
                .await?
        {
            let children = crate::run::platforms::children(&fetched.bytes);
            contents.children.insert(
                head.digest.to_string(),
                children.iter().map(ToString::to_string).collect(),
            );
        }
        contents.tags.insert(tag, head.digest.to_string());
    }
    Ok(contents)
}

/// How the cache deletes, asked by two probes that delete nothing (in `records`, the
/// records repository).
pub(super) async fn deletes(
    client: &Client,
    records: &Repository,
    budget: Duration,
) -> Result<Deletes, Failure> {
    let by_tag = client.delete_manifest(records, PROBE_TAG, budget).await?;
    if matches!(by_tag, Deleted::Missing | Deleted::Deleted) {
        return Ok(Deletes::ByTag);
    }
    let nothing = format!("sha256:{}", "0".repeat(64));
    match client.delete_manifest(records, &nothing, budget).await? {
        Deleted::Missing | Deleted::Deleted => Ok(Deletes::ByDigest),
        Deleted::Unsupported { .. } => Ok(Deletes::Disabled),
    }
}
