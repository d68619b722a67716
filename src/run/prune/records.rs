//! What image-sync wrote, recorded in the cache registry itself (the CronJob pod has no
//! volume): the repository `[prefix/]image-sync/records` holds small OCI artifacts tagged
//! `w-<millis>-<writer>-<nonce>`, whose annotation [`ENTRIES`] lists the
//! `(repository, tag, digest)` written. Shards writing at once each push their own tag, so
//! no record is ever lost; readers merge them all.
//!
//! A run records only entries no record holds yet ([`record`]: a run that copied what was
//! recorded before pushes nothing). Records are compacted by [`replace`]: one record of
//! everything is written (with a new writer and time, so that its digest is new), then
//! only the records that were read are deleted, by digest. A record another writer pushes
//! meanwhile is not among them and stays; two writers compacting at once each write their
//! merge and delete what they read, so every entry stays in some record. A run compacts
//! once [`COMPACT_AT`] records are there; prune compacts whenever it deleted something.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::decide::Deletes;
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
/// A run that finds this many records (or more) merges them, with its own entries, into
/// one (when the cache deletes).
pub const COMPACT_AT: usize = 16;
/// Attempts at pushing one record.
const WRITE_TRIES: u32 = 3;
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
    // Shards push the same empty blob at once, which Distribution may refuse to one of
    // them (a 500, or DIGEST_INVALID): a record is worth a few tries.
    let mut tries = 0;
    loop {
        tries += 1;
        let pushed = match client.put_blob(records, EMPTY, budget).await {
            Ok(_) => {
                client
                    .put_manifest(records, &tag, MANIFEST_TYPE, &bytes, budget)
                    .await
            }
            Err(failure) => Err(failure),
        };
        match pushed {
            Ok(_) => return Ok(Some(tag)),
            Err(failure) if tries < WRITE_TRIES => {
                tracing::debug!(cause = %failure, tries, "the record was not written; trying again");
                tokio::time::sleep(Duration::from_millis(250 * u64::from(tries))).await;
            }
            Err(failure) => return Err(failure),
        }
    }
}

/// What [`add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Every entry was recorded already: nothing written.
    Covered,
    /// One record of the new entries, by its tag.
    Written(String),
    /// One record of every entry, by its tag, in place of the `replaced` records read.
    Merged {
        /// The merged record's tag.
        tag: String,
        /// How many records it replaced.
        replaced: usize,
    },
}

/// Records `written`: reads the records, then [`add`].
pub async fn record(
    client: &Client,
    records: &Repository,
    written: &[Entry],
    writer: &str,
    budget: Duration,
) -> Result<Added, Failure> {
    if written.is_empty() {
        return Ok(Added::Covered);
    }
    let read = read(client, records, budget).await?;
    add(client, records, &read, written, writer, budget).await
}

/// Records the entries of `written` that none of the `read` records holds: nothing when
/// there are none; from [`COMPACT_AT`] records on, one merged record of everything in place
/// of the records read (when the cache deletes, else one record of the new entries).
pub async fn add(
    client: &Client,
    records: &Repository,
    read: &[Record],
    written: &[Entry],
    writer: &str,
    budget: Duration,
) -> Result<Added, Failure> {
    let recorded: BTreeSet<&Entry> = read.iter().flat_map(|record| &record.entries).collect();
    let new: Vec<Entry> = written
        .iter()
        .filter(|entry| !recorded.contains(entry))
        .cloned()
        .collect();
    if new.is_empty() {
        return Ok(Added::Covered);
    }
    // A cache that cannot say how it deletes gets the new entries alone: the record first.
    if read.len() >= COMPACT_AT
        && matches!(
            super::deletes(client, records, budget).await,
            Ok(Deletes::ByTag | Deletes::ByDigest)
        )
    {
        let every: Vec<Entry> = recorded.into_iter().cloned().chain(new).collect();
        let tag = replace(client, records, read, &every, writer, budget).await?;
        return Ok(Added::Merged {
            tag: tag.unwrap_or_default(),
            replaced: read.len(),
        });
    }
    let tag = write(client, records, &new, writer, budget).await?;
    Ok(tag.map_or(Added::Covered, Added::Written))
}

/// Writes one record of `entries` (none when empty) in place of the `read` records: the
/// new record first, then each record read deleted by its digest. Nothing is deleted when
/// the write fails; a record that cannot be deleted is merged again next time.
pub async fn replace(
    client: &Client,
    records: &Repository,
    read: &[Record],
    entries: &[Entry],
    writer: &str,
    budget: Duration,
) -> Result<Option<String>, Failure> {
    let tag = write(client, records, entries, writer, budget).await?;
    for record in read {
        if let Err(failure) = client
            .delete_manifest(records, &record.digest.text(), budget)
            .await
        {
            tracing::warn!(record = %record.tag, cause = %failure, "cannot delete a merged record; it is merged again next time");
        }
    }
    Ok(tag)
}

/// Every tag of a cache repository (free requests); none when the repository does not
/// exist yet.
pub async fn cache_tags(
    client: &Client,
    repository: &Repository,
    budget: Duration,
) -> Result<Vec<String>, Failure> {
    let listed = client
        .list_tags_on(repository, Side::Cache, 1000, budget)
        .await;
    match listed.tags {
        Ok(tags) => Ok(tags),
        Err(failure) if matches!(failure.class, Class::ManifestUnknown | Class::NameUnknown) => {
            Ok(Vec::new())
        }
        Err(failure) => Err(failure),
    }
}

/// Reads every record (none when the repository does not exist yet).
pub async fn read(
    client: &Client,
    records: &Repository,
    budget: Duration,
) -> Result<Vec<Record>, Failure> {
    let tags = cache_tags(client, records, budget).await?;
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
