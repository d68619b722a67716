//! Signatures, attestations and SBOMs of a synced image (`referrers: true`): after the image
//! is copied or found cached, the cache is brought up to date with what the upstream holds
//! for the same digest, decided by digest exactly as for images.
//!
//! What is looked for, for an image digest `sha256:<hex>`:
//! - cosign's legacy tags `sha256-<hex>.sig`, `.att` and `.sbom` in the image's repository
//!   (what Kyverno reads unless told otherwise);
//! - the OCI 1.1 referrers tag schema, an index tagged `sha256-<hex>` that lists every
//!   artifact whose `subject` is the image (what oras, cosign v3 and other OCI 1.1 clients
//!   write to a registry without the referrers API). Copying it copies each artifact with
//!   its `subject`, so a cache with the referrers API (Zot) lists them there too, and a
//!   cache without it (Distribution 2.8) answers the same tag-schema lookup.
//!
//! Where the upstream serves the OCI 1.1 referrers API (Docker Hub, Zot), the artifacts it
//! lists there replace the tag-schema index: one `GET /v2/<repo>/referrers/<digest>` on
//! each side (not a manifest GET: no pull), and `crane copy <source>@<d> <cache>@<d>` for
//! each artifact the cache's own listing lacks. A cache without the API gets the upstream's
//! tag-schema index when the upstream keeps one too; otherwise those referrers fail, named.
//!
//! Each tag costs one HEAD upstream (free on Docker Hub, also for a missing tag); only a
//! tag the upstream has costs a HEAD on the cache, and only a differing digest costs a copy
//! (`crane copy <source>@<digest> <cache>:<tag>`, under the copy concurrency). A run in
//! which nothing changed therefore sends no manifest GET upstream for them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::input::reference::{Digest, Repository, Tag};
use crate::output::report::ReferrerCounts;
use crate::process::Cancel;
use crate::registry::{Class, Failure, Listed, Side, Toolbox};
use crate::run::breaker::Breakers;

/// The suffixes of cosign's legacy tags, and `None` for the OCI 1.1 tag schema.
const KINDS: [Option<&str>; 4] = [Some("sig"), Some("att"), Some("sbom"), None];

/// What syncing one image's referrers came to.
#[derive(Debug)]
pub struct Synced {
    /// For the report.
    pub counts: ReferrerCounts,
    /// The first failure, if any.
    pub failure: Option<Failure>,
    /// Manifest GETs the upstream checks sent (a registry whose HEAD gives no digest):
    /// pulls on Docker Hub, added to the image's `check_gets`.
    pub check_gets: u32,
}

/// What one tag came to.
#[derive(Debug)]
enum Found {
    /// The upstream has no such tag.
    Absent,
    /// Same digest on both sides.
    AlreadyCached,
    /// Copied.
    Copied,
    /// Failed; why.
    Failed(Failure),
}

/// The tags to look for next to an image with digest `digest` (`sha256-<hex>.sig`, ...,
/// `sha256-<hex>`); `None` for a digest that cannot name a tag (not `algorithm:hex`).
pub fn tags_for(digest: &Digest) -> Option<Vec<Tag>> {
    let text = digest.text();
    let (algorithm, hex) = text.split_once(':')?;
    KINDS
        .iter()
        .map(|kind| {
            let name = match kind {
                Some(suffix) => format!("{algorithm}-{hex}.{suffix}"),
                None => format!("{algorithm}-{hex}"),
            };
            Tag::parse(&name).ok()
        })
        .collect()
}

/// How the referrers of one image are synced.
pub struct Referrers<'a> {
    /// Checks and copies.
    pub toolbox: &'a Toolbox,
    /// Bound on each digest check.
    pub check_timeout: Duration,
    /// Bound on each copy.
    pub pull_timeout: Duration,
    /// The run's cancellation.
    pub cancel: &'a Cancel,
    /// The run's copy concurrency: a referrer copy waits for a permit like an image copy.
    pub copies: &'a Semaphore,
    /// The run's breakers by host: a tripped upstream or cache gets no referrer request.
    pub breakers: &'a Breakers,
    /// Caches that refused a referrer copy in this run: they get no more referrer copies
    /// (each would spend an upstream pull for the same refusal). The next run tries again.
    pub refusals: &'a Breakers,
    /// At most this many OCI referrers per image (`settings.referrers_per_image`).
    pub per_image: usize,
}

impl Referrers<'_> {
    /// Brings the cache's referrers of `source@digest` (landing in `target`) up to date.
    pub async fn sync(&self, source: &Repository, target: &Repository, digest: &Digest) -> Synced {
        let Some(tags) = tags_for(digest) else {
            return Synced {
                counts: ReferrerCounts {
                    failed: 1,
                    ..ReferrerCounts::default()
                },
                failure: Some(Failure::new(
                    Class::Other,
                    format!("{digest} cannot name a referrers tag"),
                )),
                check_gets: 0,
            };
        };
        let gets = AtomicU32::new(0);
        let (a, b, c, listed) = tokio::join!(
            self.one(source, target, &tags[0], &gets),
            self.one(source, target, &tags[1], &gets),
            self.one(source, target, &tags[2], &gets),
            self.toolbox
                .referrers(source, digest, Side::Upstream, self.check_timeout),
        );
        let mut found = vec![a, b, c];
        found.extend(
            self.oci(source, target, digest, &tags[3], listed, &gets)
                .await,
        );
        let mut counts = ReferrerCounts::default();
        let (mut first, mut first_skipped) = (None, None);
        for found in found {
            match found {
                Found::Absent => {}
                Found::AlreadyCached => counts.already_cached += 1,
                Found::Copied => counts.copied += 1,
                Found::Failed(failure) => {
                    counts.failed += 1;
                    // The cause, not the skips it led to, is the one reported.
                    if failure.class == Class::Skipped {
                        first_skipped.get_or_insert(failure);
                    } else {
                        first.get_or_insert(failure);
                    }
                }
            }
        }
        let first = first.or(first_skipped);
        Synced {
            counts,
            failure: first,
            check_gets: gets.into_inner(),
        }
    }

    /// The OCI 1.1 referrers: by the upstream's referrers API when it has one, copied by
    /// digest into a cache that has one too (Zot); else by the tag-schema index.
    async fn oci(
        &self,
        source: &Repository,
        target: &Repository,
        digest: &Digest,
        index_tag: &Tag,
        upstream: Listed,
        gets: &AtomicU32,
    ) -> Vec<Found> {
        let mut listed = match upstream {
            Listed::Unsupported => return vec![self.one(source, target, index_tag, gets).await],
            Listed::Failed(failure) => return vec![Found::Failed(failure)],
            Listed::Supported(listed) if listed.is_empty() => return Vec::new(),
            Listed::Supported(listed) => listed,
        };
        if listed.len() > self.per_image {
            tracing::warn!(
                image = %source.with_digest(digest),
                listed = listed.len(),
                synced = self.per_image,
                "more referrers than settings.referrers_per_image: only the first are synced"
            );
            listed.truncate(self.per_image);
        }
        let cached = match self
            .toolbox
            .referrers(target, digest, Side::Cache, self.check_timeout)
            .await
        {
            Listed::Supported(cached) => cached,
            Listed::Failed(failure) => return vec![Found::Failed(failure)],
            // A cache without the API finds referrers only through a tag-schema index: the
            // upstream's, when it keeps one as well.
            Listed::Unsupported => {
                return match self.one(source, target, index_tag, gets).await {
                    Found::Absent => vec![Found::Failed(
                        Failure::new(
                            Class::Other,
                            format!(
                                "{} lists {} referrer(s) through the referrers API and keeps no `{index_tag}` index, and the cache has no referrers API: use a cache that serves it (Zot)",
                                source.with_digest(digest),
                                listed.len()
                            ),
                        )
                        .on(Side::Cache, Some(target.host())),
                    )],
                    found => vec![found],
                };
            }
        };
        let mut found = Vec::with_capacity(listed.len());
        for referrer in listed {
            if cached.iter().any(|have| have.digest == referrer.digest) {
                found.push(Found::AlreadyCached);
                continue;
            }
            let Ok(_permit) = self.copies.acquire().await else {
                found.push(Found::Failed(Failure::new(
                    Class::Interrupted,
                    "the copy queue closed",
                )));
                continue;
            };
            let copied = self
                .under_reserve(
                    source,
                    target,
                    self.toolbox.copy_by_digest(
                        source,
                        &referrer.digest,
                        target,
                        self.pull_timeout,
                        self.cancel,
                    ),
                )
                .await;
            found.push(match copied {
                Ok(()) => {
                    tracing::info!(reference = %target.with_digest(&referrer.digest), artifact_type = referrer.artifact_type.as_deref().unwrap_or(""), "referrer copied");
                    Found::Copied
                }
                Err(failure) => Found::Failed(failure),
            });
        }
        found
    }

    /// One tag; manifest GETs its upstream check had to send (a HEAD without a digest)
    /// are added to `gets`.
    async fn one(
        &self,
        source: &Repository,
        target: &Repository,
        tag: &Tag,
        gets: &AtomicU32,
    ) -> Found {
        if let Some(skipped) = self.breakers.check(&[source.host(), target.host()]) {
            return Found::Failed(skipped);
        }
        let upstream = self
            .toolbox
            .digest(source, tag, Side::Upstream, self.check_timeout, self.cancel)
            .await;
        gets.fetch_add(upstream.gets, Ordering::Relaxed);
        let upstream = match upstream.outcome {
            Ok(digest) => digest,
            Err(failure) if is_absent(&failure) => return Found::Absent,
            Err(failure) => return Found::Failed(failure),
        };
        let cached = self
            .toolbox
            .digest(target, tag, Side::Cache, self.check_timeout, self.cancel)
            .await;
        match cached.outcome {
            Ok(digest) if digest == upstream => return Found::AlreadyCached,
            Ok(_) => {}
            Err(failure) if is_absent(&failure) => {}
            Err(failure) => return Found::Failed(failure),
        }
        let Ok(_permit) = self.copies.acquire().await else {
            return Found::Failed(Failure::new(Class::Interrupted, "the copy queue closed"));
        };
        let copied = self
            .under_reserve(
                source,
                target,
                self.toolbox.copy(
                    source,
                    &upstream,
                    target,
                    tag,
                    self.pull_timeout,
                    self.cancel,
                    None,
                ),
            )
            .await;
        match copied {
            Ok(()) => {
                tracing::info!(reference = %target.with_tag(tag), digest = %upstream, "referrer copied");
                Found::Copied
            }
            Err(failure) => Found::Failed(failure),
        }
    }
}

impl Referrers<'_> {
    /// A referrer copy under the quota reserve, as image copies: not started when it would
    /// take the upstream's quota below the reserve, and its GETs counted.
    async fn under_reserve(
        &self,
        source: &Repository,
        target: &Repository,
        copy: impl std::future::Future<Output = crate::registry::Attempted<()>>,
    ) -> Result<(), Failure> {
        let hosts = [source.host(), target.host()];
        if let Some(skipped) = self.breakers.check(&hosts) {
            return Err(skipped);
        }
        if let Some(skipped) = self.refusals.check(&[target.host()]) {
            return Err(skipped);
        }
        let ledger = self.toolbox.ledger();
        let ticket = ledger
            .admit(source.host())
            .map_err(|deferral| Failure::new(Class::Skipped, deferral.to_string()))?;
        let copied = copy.await;
        let gets = copied.gets + copied.children.unwrap_or_default();
        ledger.settle(ticket, gets);
        if let Err(failure) = &copied.outcome {
            if failure.class.trips_breaker() {
                self.breakers.trip(failure);
            } else if failure.class == Class::WriteRefused
                && failure.side == Some(Side::Cache)
                && self.refusals.trip(failure).is_some()
            {
                tracing::warn!(registry = %target.host(), cause = %failure, "the cache refused a referrer copy: no more referrer copies go to it in this run (each would spend an upstream pull for the same answer)");
            }
        }
        copied.outcome
    }
}

/// The registry says there is no such tag (or repository).
fn is_absent(failure: &Failure) -> bool {
    matches!(failure.class, Class::ManifestUnknown | Class::NameUnknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tags_are_cosigns_legacy_ones_and_the_oci_tag_schema() {
        let hex = "a".repeat(64);
        let digest = Digest::parse(&format!("sha256:{hex}")).expect("digest");
        let tags: Vec<String> = tags_for(&digest)
            .expect("tags")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            tags,
            [
                format!("sha256-{hex}.sig"),
                format!("sha256-{hex}.att"),
                format!("sha256-{hex}.sbom"),
                format!("sha256-{hex}"),
            ]
        );
    }

    #[test]
    fn counts_serialize_with_the_report_field_names() {
        let counts = ReferrerCounts {
            copied: 1,
            already_cached: 2,
            failed: 0,
        };
        assert_eq!(
            serde_json::to_value(counts).expect("json"),
            serde_json::json!({"copied": 1, "already_cached": 2, "failed": 0})
        );
    }
}
