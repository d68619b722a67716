//! What image-sync wrote, recorded in the cache registry itself (the CronJob pod has no
//! volume): the repository `[prefix/]image-sync/records` holds one small OCI artifact per
//! writer and run, tagged `w-<millis>-<writer>-<nonce>`, whose annotation
//! [`ENTRIES`] lists the `(repository, tag, digest)` it wrote. Shards writing at once each
//! push their own tag, so no record is ever lost; readers merge them all. Prune compacts:
//! it writes one merged record (with a new writer and time, so that its digest is new) and
//! deletes, by digest, only the records it read.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::input::plan::Plan;
use crate::input::reference::{Digest, Repository};
use crate::registry::client::Client;
use crate::registry::{Class, Failure, Side};

/// The records repository under the cache's path prefix.
pub const REPOSITORY: &str = "image-sync/records";
/// The records' artifact type.
pub const ARTIFACT_TYPE: &str = "application/vnd.pleme-io.image-sync.records.v1+json";
/// The annotation holding a record's entries (JSON).
pub const ENTRIES: &str = "io.github.pleme-io.image-sync.records";
/// The empty JSON blob (`{}`), the config and only layer of a record.
const EMPTY: &[u8] = b"{}";
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// One tag image-sync wrote.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// The repository path in the cache (without the host).
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The digest written under it.
    pub digest: String,
}

/// One record as read: its tag and digest in the records repository, and its entries.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its tag.
    pub tag: String,
    /// Its manifest's digest.
    pub digest: Digest,
    /// What it lists.
    pub entries: Vec<Entry>,
}

/// The records repository of the plan's cache.
pub fn repository(plan: &Plan) -> Repository {
    let path = match plan.cache_registry.split_once('/') {
        Some((_, prefix)) => format!("{prefix}/{REPOSITORY}"),
        None => REPOSITORY.to_owned(),
    };
    Repository::new(&plan.cache_host, &path)
}

/// A writer name fit for a tag: `[a-z0-9-]`, at most 40 characters.
fn writer_name(writer: &str) -> String {
    let cleaned: String = writer
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if cleaned.is_empty() {
        "run".to_owned()
    } else {
        cleaned
    }
}

/// The manifest of a record listing `entries` (sorted, without duplicates).
pub fn manifest(entries: &[Entry], writer: &str, at: &str) -> Result<Vec<u8>, String> {
    let sorted: BTreeSet<&Entry> = entries.iter().collect();
    let listed = serde_json::to_string(&sorted).map_err(|err| err.to_string())?;
    let empty = serde_json::json!({
        "mediaType": EMPTY_TYPE,
        "digest": Digest::of_bytes(EMPTY).to_string(),
        "size": EMPTY.len(),
    });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": empty,
        "layers": [empty],
        "annotations": {
            ENTRIES: listed,
            "io.github.pleme-io.image-sync.writer": writer,
            "org.opencontainers.image.created": at,
        },
    });
    serde_json::to_vec(&manifest).map_err(|err| err.to_string())
}

/// The entries of a record's manifest (`None` for anything else).
pub fn entries(manifest: &[u8]) -> Option<Vec<Entry>> {
    let value: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let listed = value.get("annotations")?.get(ENTRIES)?.as_str()?;
    serde_json::from_str(listed).ok()
}

/// Writes one record of `entries` (nothing when there are none); its tag.
pub async fn write(
    client: &Client,
    records: &Repository,
    entries: &[Entry],
    writer: &str,
    budget: Duration,
) -> Result<Option<String>, Failure> {
    if entries.is_empty() {
        return Ok(None);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let writer = writer_name(writer);
    let tag = format!(
        "w-{}-{writer}-{:x}{:x}",
        now.as_millis(),
        std::process::id(),
        now.subsec_nanos()
    );
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let bytes = manifest(entries, &format!("{writer} {tag}"), &at)
        .map_err(|why| Failure::new(Class::Other, why))?;
    if bytes.len() > crate::registry::client::MAX_MANIFEST_BYTES {
        return Err(Failure::new(
            Class::Other,
            format!(
                "the record of {} tags is larger than a manifest may be; not written",
                entries.len()
            ),
        ));
    }
    client.put_blob(records, EMPTY, budget).await?;
    client
        .put_manifest(records, &tag, MANIFEST_TYPE, &bytes, budget)
        .await?;
    Ok(Some(tag))
}

/// Reads every record (none when the repository does not exist yet).
pub async fn read(
    client: &Client,
    records: &Repository,
    budget: Duration,
) -> Result<Vec<Record>, Failure> {
    let listed = client
        .list_tags_on(records, Side::Cache, 1000, budget)
        .await;
    let tags = match listed.tags {
        Ok(tags) => tags,
        Err(failure) if matches!(failure.class, Class::ManifestUnknown | Class::NameUnknown) => {
            return Ok(Vec::new());
        }
        Err(failure) => return Err(failure),
    };
    let mut read = Vec::new();
    for tag in tags {
        let Some(fetched) = client
            .get_manifest(records, &tag, Side::Cache, budget)
            .await?
        else {
            // Compacted away since the listing.
            continue;
        };
        let entries = entries(&fetched.bytes).ok_or_else(|| {
            Failure::new(
                Class::Malformed,
                format!("{records}:{tag} is not an image-sync record"),
            )
            .on(Side::Cache, Some(records.host()))
        })?;
        read.push(Record {
            tag,
            digest: fetched.digest,
            entries,
        });
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_lists_its_entries_sorted_once_and_reads_back() {
        let entry = |tag: &str| Entry {
            repository: "library/nginx".into(),
            tag: tag.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
        };
        let bytes = manifest(&[entry("2"), entry("1"), entry("2")], "w", "t").expect("manifest");
        assert_eq!(entries(&bytes), Some(vec![entry("1"), entry("2")]));
        assert_eq!(entries(b"{}"), None);
        // A new writer or time gives a new digest: compaction never deletes what it wrote.
        let other = manifest(&[entry("1"), entry("2")], "w2", "t").expect("manifest");
        assert_ne!(Digest::of_bytes(&bytes), Digest::of_bytes(&other));
        assert_eq!(writer_name("Shard 0/3"), "shard-0-3");
        assert_eq!(writer_name(""), "run");
    }
}
