//! A multi-arch image cached with only the platforms the nodes run.
//!
//! The upstream index (an OCI index or a Docker manifest list) is read once (one GET); the
//! children of the listed platforms are copied by their upstream digest (one GET each, so
//! that a pod naming a child digest still hits the cache), together with the buildx
//! attestation manifests (`unknown/unknown`, `vnd.docker.reference.digest`) that point at
//! a kept child; then an index of the same media type listing only those is written under
//! the tag. Its digest is new, so it records the upstream index digest
//! ([`UPSTREAM_DIGEST`]) and the filter ([`PLATFORMS`]) in its annotations: the next run
//! compares the upstream HEAD digest with them, and a no-op costs no upstream GET.
//!
//! A listed platform the index lacks is a warning, never a failure. A single-platform
//! image, or an index whose platforms are all listed, is copied as it is (same digest).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::input::platforms::{self, Platform};
use crate::input::reference::{Digest, Repository, Tag};
use crate::process::Cancel;
use crate::registry::client::Client;
use crate::registry::{Attempted, Class, Failure, Side, Tool, Toolbox};

/// The annotation of a filtered index naming the upstream index digest it was made from.
pub const UPSTREAM_DIGEST: &str = "io.github.pleme-io.image-sync.upstream-digest";
/// The annotation of a filtered index naming the platform filter it was made with.
pub const PLATFORMS: &str = "io.github.pleme-io.image-sync.platforms";

/// The media types of an index.
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Child copies at once: one. Each child is its own crane process, and children often
/// share blobs (the attestations' config, common layers); two processes uploading the
/// same blob into one repository of Distribution 2.8 at once make it answer
/// `DIGEST_INVALID` / `MANIFEST_BLOB_UNKNOWN`, and the retry costs upstream GETs again. One
/// crane copying a whole index dedupes its blobs itself; separate processes cannot.
const CHILD_COPIES: usize = 1;

/// An index with the children of the listed platforms only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filtered {
    /// The index to write: the upstream bytes when nothing was dropped.
    pub bytes: Vec<u8>,
    /// Whether children were dropped (the bytes are a new index, with annotations).
    pub changed: bool,
    /// The kept children's digests, image manifests first, then attestations.
    pub children: Vec<Digest>,
    /// The kept platforms (`linux/amd64`), sorted.
    pub kept: Vec<String>,
    /// Listed platforms the index has no manifest for.
    pub missing: Vec<Platform>,
}

/// Whether a media type (or a manifest's bytes) is an index.
pub fn is_index(media_type: &str) -> bool {
    INDEX_TYPES.contains(&media_type)
}

fn child_platform(child: &Value) -> Option<(String, String, Option<String>)> {
    let platform = child.get("platform")?;
    Some((
        platform.get("os")?.as_str()?.to_owned(),
        platform.get("architecture")?.as_str()?.to_owned(),
        platform
            .get("variant")
            .and_then(Value::as_str)
            .map(str::to_owned),
    ))
}

fn annotation<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value.get("annotations")?.get(key)?.as_str()
}

fn describe_child(os: &str, architecture: &str, variant: Option<&str>) -> String {
    match variant {
        Some(variant) if !variant.is_empty() => format!("{os}/{architecture}/{variant}"),
        _ => format!("{os}/{architecture}"),
    }
}

/// Filters an index to the `wanted` platforms; `upstream` is its digest, recorded in the
/// new index's annotations with the filter. Pure: no request.
pub fn filter_index(
    bytes: &[u8],
    upstream: &Digest,
    wanted: &[Platform],
) -> Result<Filtered, String> {
    let mut index: Value =
        serde_json::from_slice(bytes).map_err(|err| format!("the index is not JSON ({err})"))?;
    let children = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or("the index has no `manifests` list")?
        .clone();
    let mut kept_images = Vec::new();
    let mut kept_platforms = std::collections::BTreeSet::new();
    let mut found = vec![false; wanted.len()];
    for child in &children {
        let Some((os, architecture, variant)) = child_platform(child) else {
            continue;
        };
        let mut listed = false;
        for (i, platform) in wanted.iter().enumerate() {
            if platform.matches(&os, &architecture, variant.as_deref()) {
                found[i] = true;
                listed = true;
            }
        }
        if listed && !(os == "unknown" && architecture == "unknown") {
            kept_images.push(child_digest(child)?);
            kept_platforms.insert(describe_child(&os, &architecture, variant.as_deref()));
        }
    }
    let mut kept_children = Vec::new();
    let mut attestations = Vec::new();
    for child in children.iter().cloned() {
        let digest = child_digest(&child)?;
        let attests = annotation(&child, "vnd.docker.reference.digest").and_then(Digest::parse);
        let is_attestation = matches!(child_platform(&child), Some((os, arch, _)) if os == "unknown" && arch == "unknown")
            && attests.is_some();
        let keep = if is_attestation {
            attests.is_some_and(|subject| kept_images.contains(&subject))
        } else {
            kept_images.contains(&digest)
        };
        if keep {
            if is_attestation {
                attestations.push(digest);
            }
            kept_children.push(child);
        }
    }
    let total = index
        .get("manifests")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let missing: Vec<Platform> = wanted
        .iter()
        .zip(&found)
        .filter(|(_, found)| !**found)
        .map(|(platform, _)| platform.clone())
        .collect();
    let mut children_digests = kept_images;
    children_digests.extend(attestations);
    let kept: Vec<String> = kept_platforms.into_iter().collect();
    if kept_children.len() == total {
        return Ok(Filtered {
            bytes: bytes.to_vec(),
            changed: false,
            children: children_digests,
            kept,
            missing,
        });
    }
    if kept_children.is_empty() {
        return Err(format!(
            "the index has no manifest for any listed platform ({}); it offers {}",
            platforms::describe(wanted),
            offered(&children)
        ));
    }
    let object = index
        .as_object_mut()
        .ok_or("the index is not a JSON object")?;
    object.insert("manifests".to_owned(), Value::Array(kept_children));
    let annotations = object
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if !annotations.is_object() {
        *annotations = Value::Object(Map::new());
    }
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(
            UPSTREAM_DIGEST.to_owned(),
            Value::String(upstream.to_string()),
        );
        annotations.insert(
            PLATFORMS.to_owned(),
            Value::String(platforms::describe(wanted)),
        );
    }
    let bytes = serde_json::to_vec(&index).map_err(|err| err.to_string())?;
    Ok(Filtered {
        bytes,
        changed: true,
        children: children_digests,
        kept,
        missing,
    })
}

fn child_digest(child: &Value) -> Result<Digest, &'static str> {
    child
        .get("digest")
        .and_then(Value::as_str)
        .and_then(Digest::parse)
        .ok_or("a child of the index has no valid digest")
}

/// The platforms of an index's children (`linux/arm64/v8`), sorted, attestations left out.
fn platforms_of(children: &[Value]) -> Vec<String> {
    let mut platforms: Vec<String> = children
        .iter()
        .filter_map(child_platform)
        .filter(|(os, arch, _)| !(os == "unknown" && arch == "unknown"))
        .map(|(os, arch, variant)| describe_child(&os, &arch, variant.as_deref()))
        .collect();
    platforms.sort();
    platforms.dedup();
    platforms
}

fn offered(children: &[Value]) -> String {
    let offered = platforms_of(children);
    if offered.is_empty() {
        "none".to_owned()
    } else {
        offered.join(", ")
    }
}

/// What a cached index says about the filter it was made with: the upstream digest, the
/// filter, and the platforms its children have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// [`UPSTREAM_DIGEST`].
    pub upstream: Digest,
    /// [`PLATFORMS`].
    pub filter: String,
    /// The children's platforms, sorted (attestations left out).
    pub kept: Vec<String>,
}

/// Reads the annotations of a filtered index image-sync wrote (`None` for anything else).
pub fn recorded(bytes: &[u8]) -> Option<Recorded> {
    let index: Value = serde_json::from_slice(bytes).ok()?;
    let upstream = Digest::parse(annotation(&index, UPSTREAM_DIGEST)?)?;
    let filter = annotation(&index, PLATFORMS)?.to_owned();
    let kept = index
        .get("manifests")
        .and_then(Value::as_array)
        .map(|children| platforms_of(children))
        .unwrap_or_default();
    Some(Recorded {
        upstream,
        filter,
        kept,
    })
}

/// The children an index lists (attestations included).
pub fn children(index: &[u8]) -> Vec<Digest> {
    serde_json::from_slice::<Value>(index)
        .ok()
        .and_then(|value| {
            value
                .get("manifests")
                .and_then(Value::as_array)
                .map(|children| {
                    children
                        .iter()
                        .filter_map(|child| Digest::parse(child.get("digest")?.as_str()?))
                        .collect()
                })
        })
        .unwrap_or_default()
}

/// What a filtered copy did.
#[derive(Debug, Clone)]
pub struct Copied {
    /// The digest of the index written under the tag (the upstream's when unchanged).
    pub digest: Digest,
    /// The kept platforms.
    pub kept: Vec<String>,
    /// Whether the written index differs from the upstream one.
    pub changed: bool,
    /// The children it lists.
    pub children: Vec<Digest>,
}

/// What a filtered copy needs.
pub struct Copy<'a> {
    /// The toolbox (crane copies the children).
    pub toolbox: &'a Arc<Toolbox>,
    /// The upstream repository.
    pub source: &'a Repository,
    /// The cache repository.
    pub target: &'a Repository,
    /// The cache tag.
    pub tag: &'a Tag,
    /// The platforms to keep.
    pub wanted: &'a [Platform],
    /// Bound on each child copy.
    pub pull_timeout: Duration,
    /// Bound on each manifest request.
    pub check_timeout: Duration,
    /// The run's cancel signal.
    pub cancel: &'a Cancel,
}

/// The outcome of [`Copy::run`]: `Ok(None)` when the upstream manifest is no index (the
/// caller copies it whole).
pub type Outcome = Attempted<Option<Copied>>;

fn attempted(outcome: Result<Option<Copied>, Failure>, gets: u32, children: u32) -> Outcome {
    Attempted {
        tool: Some(Tool::Builtin),
        tries: 1,
        children: outcome.is_ok().then_some(children),
        outcome,
        gets,
    }
}

impl Copy<'_> {
    /// Copies `remote` (the upstream index digest) filtered into the cache. `gets` in the
    /// answer counts every upstream manifest GET (the index and each child copied); each
    /// was counted in the quota ledger too.
    pub async fn run(&self, remote: &Digest) -> Outcome {
        let Some(client) = self.toolbox.client() else {
            return attempted(Ok(None), 0, 0);
        };
        let not_there = || format!("{} is not in the upstream", self.source.with_digest(remote));
        let head = client
            .head_manifest(
                self.source,
                &remote.text(),
                Side::Upstream,
                self.check_timeout,
            )
            .await;
        match head {
            Ok(Some(head)) if !head.media_type.is_empty() && !is_index(&head.media_type) => {
                return attempted(Ok(None), 0, 0);
            }
            Ok(Some(_)) => {}
            Ok(None) => return self.upstream_failure(Class::ManifestUnknown, not_there(), 0),
            Err(failure) => return attempted(Err(failure), 0, 0),
        }
        let fetched = client
            .get_manifest(
                self.source,
                &remote.text(),
                Side::Upstream,
                self.check_timeout,
            )
            .await;
        let fetched = match fetched {
            Ok(Some(fetched)) => fetched,
            Ok(None) => return self.upstream_failure(Class::ManifestUnknown, not_there(), 1),
            Err(failure) => return attempted(Err(failure), 1, 0),
        };
        let is_index_bytes = is_index(&fetched.media_type)
            || crate::registry::client::parse_manifest(&fetched.bytes).is_ok_and(|n| n > 0);
        if !is_index_bytes {
            // Should the HEAD have hidden it: copied whole by the caller (one GET more).
            return attempted(Ok(None), 1, 0);
        }
        let filtered = match filter_index(&fetched.bytes, remote, self.wanted) {
            Ok(filtered) => filtered,
            Err(why) => {
                let detail = format!("{}: {why}", self.source.with_digest(remote));
                return self.upstream_failure(Class::Malformed, detail, 1);
            }
        };
        for platform in &filtered.missing {
            tracing::warn!(
                image = %self.source,
                tag = %self.tag,
                platform = %platform,
                "the upstream index has no manifest for this listed platform; the others are cached"
            );
        }
        let (child_gets, failure) = self.copy_children(client, &filtered.children).await;
        let gets = 1 + child_gets;
        if let Some(failure) = failure {
            return attempted(Err(failure), gets, child_gets);
        }
        let media_type = if fetched.media_type.is_empty() {
            INDEX_TYPES[0].to_owned()
        } else {
            fetched.media_type.clone()
        };
        let put = client
            .put_manifest(
                self.target,
                self.tag.as_str(),
                &media_type,
                &filtered.bytes,
                self.check_timeout,
            )
            .await;
        let outcome = put.map(|digest| {
            Some(Copied {
                digest,
                kept: filtered.kept.clone(),
                changed: filtered.changed,
                children: filtered.children.clone(),
            })
        });
        attempted(outcome, gets, child_gets)
    }

    /// This copy failed upstream (`class`, `detail`) after `gets` manifest GETs.
    fn upstream_failure(&self, class: Class, detail: String, gets: u32) -> Outcome {
        let failure = Failure::new(class, detail).on(Side::Upstream, Some(self.source.host()));
        attempted(Err(failure), gets, 0)
    }

    /// Copies each child the cache lacks by digest (crane, else skopeo), one at a time;
    /// the upstream GETs they spent (counted in the ledger here) and the first failure.
    async fn copy_children(&self, client: &Client, children: &[Digest]) -> (u32, Option<Failure>) {
        let mut missing = Vec::new();
        for child in children {
            match client
                .head_manifest(self.target, &child.text(), Side::Cache, self.check_timeout)
                .await
            {
                Ok(Some(_)) => {}
                Ok(None) => missing.push(child.clone()),
                Err(failure) => return (0, Some(failure)),
            }
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(CHILD_COPIES));
        let mut tasks = tokio::task::JoinSet::new();
        for child in missing {
            let toolbox = Arc::clone(self.toolbox);
            let (source, target) = (self.source.clone(), self.target.clone());
            let (timeout, cancel) = (self.pull_timeout, self.cancel.clone());
            let permits = Arc::clone(&permits);
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                toolbox
                    .copy_by_digest(&source, &child, &target, timeout, &cancel)
                    .await
            });
        }
        let (mut gets, mut first) = (0, None);
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(copied) => {
                    gets += copied.gets;
                    if let Err(failure) = copied.outcome {
                        first.get_or_insert(failure);
                    }
                }
                Err(err) => {
                    first.get_or_insert(Failure::new(
                        Class::Other,
                        format!("internal error: a child copy {err}"),
                    ));
                }
            }
        }
        self.toolbox.ledger().answered(
            self.source.host(),
            crate::registry::quota::Answer {
                gets,
                ..Default::default()
            },
        );
        (gets, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn index(media_type: &str) -> Vec<u8> {
        let child = |d: char, os: &str, arch: &str, variant: Option<&str>| {
            let mut platform = json!({"os": os, "architecture": arch});
            if let Some(variant) = variant {
                platform["variant"] = json!(variant);
            }
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(d), "size": 1, "platform": platform})
        };
        let attestation = |d: char, of: char| {
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(d), "size": 1,
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": digest(of)}})
        };
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                child('a', "linux", "amd64", None),
                child('b', "linux", "arm64", Some("v8")),
                child('c', "linux", "arm", Some("v7")),
                attestation('d', 'a'),
                attestation('e', 'b'),
                attestation('f', 'c'),
            ]
        }))
        .expect("json")
    }

    fn wanted(list: &[&str]) -> Vec<Platform> {
        list.iter()
            .map(|p| Platform::parse(p).expect("platform"))
            .collect()
    }

    #[test]
    fn kept_platforms_keep_their_attestations_and_the_media_type() {
        let upstream = Digest::parse(&digest('9')).expect("digest");
        for media_type in INDEX_TYPES {
            let filtered = filter_index(
                &index(media_type),
                &upstream,
                &wanted(&["linux/amd64", "linux/s390x"]),
            )
            .expect("filtered");
            assert!(filtered.changed);
            assert_eq!(filtered.kept, ["linux/amd64"]);
            assert_eq!(
                filtered.children,
                [digest('a'), digest('d')].map(|d| Digest::parse(&d).expect("d"))
            );
            assert_eq!(filtered.missing, wanted(&["linux/s390x"]));
            let written: Value = serde_json::from_slice(&filtered.bytes).expect("json");
            assert_eq!(written["mediaType"], media_type);
            assert_eq!(written["manifests"].as_array().map(Vec::len), Some(2));
            let recorded = recorded(&filtered.bytes).expect("annotated");
            assert_eq!(recorded.upstream, upstream);
            assert_eq!(recorded.filter, "linux/amd64,linux/s390x");
            assert_eq!(recorded.kept, ["linux/amd64"]);
        }
    }

    #[test]
    fn an_index_whose_platforms_are_all_listed_is_kept_as_it_is() {
        let upstream = Digest::parse(&digest('9')).expect("digest");
        let bytes = index(INDEX_TYPES[0]);
        let filtered = filter_index(
            &bytes,
            &upstream,
            &wanted(&["linux/amd64", "linux/arm64", "linux/arm/v7"]),
        )
        .expect("filtered");
        assert!(!filtered.changed);
        assert_eq!(filtered.bytes, bytes);
        assert_eq!(filtered.children.len(), 6);
        assert!(recorded(&bytes).is_none());
    }

    #[test]
    fn an_index_without_any_listed_platform_is_an_error_naming_what_it_offers() {
        let upstream = Digest::parse(&digest('9')).expect("digest");
        let why = filter_index(
            &index(INDEX_TYPES[1]),
            &upstream,
            &wanted(&["windows/amd64"]),
        )
        .expect_err("nothing kept");
        assert!(
            why.contains("linux/amd64, linux/arm/v7, linux/arm64/v8"),
            "{why}"
        );
        assert!(filter_index(b"{}", &upstream, &wanted(&["linux/amd64"])).is_err());
    }
}
