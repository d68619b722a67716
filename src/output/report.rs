//! The JSON report printed on stdout: the seed's contract, plus `dry_run`, `would_pull`
//! and the tool per result. Field names are public: add, never rename.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use crate::registry::Tool;
use crate::registry::quota::QuotaReport;

/// What happened to one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Copied into the cache in this run.
    Pulled,
    /// The cache already held the upstream digest.
    AlreadyCached,
    /// Dry run: would have been copied.
    WouldPull,
    /// See `error`.
    Failed,
    /// Not done in this run (run deadline or interruption); the next run picks it up.
    Deferred,
}

impl Action {
    /// The name used in the report and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pulled => "pulled",
            Self::AlreadyCached => "already_cached",
            Self::WouldPull => "would_pull",
            Self::Failed => "failed",
            Self::Deferred => "deferred",
        }
    }
}

/// One line of `results`, in config order. Every result is kept until the report (100,000
/// images keep 100,000 of them), so a result is small: texts shared with its job, its two
/// digests kept once when they are the same, and what only some images have (an error,
/// referrers, a watched pin, a platform filter) out of line. Serialised by hand, field by
/// field in the report's order (see the `Serialize` impl below).
#[derive(Debug, Clone)]
pub struct ImageResult {
    /// `source` as written in the config (shared with the entry's other tags).
    pub image: std::sync::Arc<str>,
    /// `tag` as written in the config (shared with the image's job).
    pub tag: std::sync::Arc<str>,
    /// What happened.
    pub action: Action,
    /// `remote_digest`, the upstream digest that was checked (and copied), when read, and
    /// `cached_digest`, the cache's digest before this run (null when the tag was not cached).
    pub digests: Digests,
    /// Wall time spent on this image.
    pub duration_ms: u64,
    /// The tool that did the work (the copy, else the last check), or null.
    pub tool: Option<Tool>,
    /// Tool attempts of the steps, counting retries and fallbacks to another tool: 1
    /// when every step took one attempt.
    pub attempts: u32,
    /// Manifest GETs the upstream digest checks sent (each a pull on Docker Hub): 0
    /// while HEAD answers with a digest. Copies are not counted here.
    pub check_gets: u32,
    /// Decided without an upstream request: `immutable` (a cached tag matching
    /// `settings.immutable_tags`) or `pinned` (`watch_tag: false`).
    pub skipped_check: Option<crate::input::pins::SkippedCheck>,
    /// A tag chosen by tag rules: `include`, or `rules: ...` as written.
    pub selected_by: Option<std::sync::Arc<str>>,
    /// What only some images have, out of line: most results have none of it.
    pub details: Option<Box<Details>>,
}

/// A result's two digests: the upstream's and the cache's before the run. In a run where
/// little changes they are mostly one digest, kept once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Digests {
    /// Neither was read.
    #[default]
    Unknown,
    /// The cache already held the upstream's digest.
    Same(crate::input::reference::Digest),
    /// Different digests, or only one of them known (`cached` is `None` for a tag the
    /// cache did not hold).
    Differ {
        /// The upstream's digest.
        remote: Option<crate::input::reference::Digest>,
        /// The cache's digest (boxed: a result rarely has two).
        cached: Option<Box<crate::input::reference::Digest>>,
    },
}

impl Digests {
    /// The digests read from the upstream and from the cache.
    pub fn new(
        remote: Option<crate::input::reference::Digest>,
        cached: Option<crate::input::reference::Digest>,
    ) -> Self {
        match (remote, cached) {
            (None, None) => Self::Unknown,
            (Some(remote), Some(cached)) if remote == cached => Self::Same(remote),
            (remote, cached) => Self::Differ {
                remote,
                cached: cached.map(Box::new),
            },
        }
    }

    /// The upstream digest (`remote_digest`).
    pub fn remote(&self) -> Option<&crate::input::reference::Digest> {
        match self {
            Self::Unknown => None,
            Self::Same(digest) => Some(digest),
            Self::Differ { remote, .. } => remote.as_ref(),
        }
    }

    /// The cache's digest before the run (`cached_digest`).
    pub fn cached(&self) -> Option<&crate::input::reference::Digest> {
        match self {
            Self::Unknown => None,
            Self::Same(digest) => Some(digest),
            Self::Differ { cached, .. } => cached.as_deref(),
        }
    }
}

/// The fields of an [`ImageResult`] that only some images have, each absent from the
/// report when unset (`error` alone is written as null).
#[derive(Debug, Clone, Default)]
pub struct Details {
    /// One line naming the cause of a failed or deferred image (`error`).
    pub error: Option<String>,
    /// The typed failure of a failed image (class, side, host): the metrics count failed
    /// images by it. Not in the JSON report, whose `error` line names the same cause.
    pub failure: Option<crate::registry::Failure>,
    /// Signatures, attestations and SBOMs brought up to date (`referrers: true` only;
    /// absent otherwise).
    pub referrers: Option<ReferrerCounts>,
    /// A pinned image whose tag was watched: whether the upstream tag points elsewhere
    /// than the pin (the pin is kept). Absent when not pinned or not watched.
    pub tag_moved: Option<bool>,
    /// A pinned image whose tag was watched: the upstream tag's digest.
    pub upstream_digest: Option<crate::input::reference::Digest>,
    /// A platform filter applies (`platforms`) and left out platforms: the digest of the
    /// index in the cache, which differs from `remote_digest`. Absent otherwise.
    pub filtered_digest: Option<crate::input::reference::Digest>,
    /// A platform filter applies: the platforms the cache holds (`linux/amd64`). Absent
    /// without a filter.
    pub platforms: Option<Vec<String>>,
}

impl Details {
    /// The details of a result, `None` (no allocation) when it has none.
    pub fn of(details: Self) -> Option<Box<Self>> {
        let none = details.error.is_none()
            && details.failure.is_none()
            && details.referrers.is_none()
            && details.tag_moved.is_none()
            && details.upstream_digest.is_none()
            && details.filtered_digest.is_none()
            && details.platforms.is_none();
        (!none).then(|| Box::new(details))
    }

    /// Only an error line and, for a failed image, its typed failure.
    pub fn with_error(
        error: String,
        failure: Option<crate::registry::Failure>,
    ) -> Option<Box<Self>> {
        Self::of(Self {
            error: Some(error),
            failure,
            ..Self::default()
        })
    }
}

impl ImageResult {
    /// One line naming the cause, or `None`.
    pub fn error(&self) -> Option<&str> {
        self.details.as_ref()?.error.as_deref()
    }

    /// The typed failure of a failed image.
    pub fn failure(&self) -> Option<&crate::registry::Failure> {
        self.details.as_ref()?.failure.as_ref()
    }

    /// A pinned image whose tag was watched: whether the upstream tag left the pin.
    pub fn tag_moved(&self) -> Option<bool> {
        self.details.as_ref()?.tag_moved
    }

    /// With a platform filter that left out platforms: the filtered index's digest.
    pub fn filtered_digest(&self) -> Option<&crate::input::reference::Digest> {
        self.details.as_ref()?.filtered_digest.as_ref()
    }
}

impl Serialize for ImageResult {
    /// The seed's fields first, always present (`null` when unset), then those only some
    /// images have, each absent when unset.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("image", &*self.image)?;
        map.serialize_entry("tag", &*self.tag)?;
        map.serialize_entry("action", &self.action)?;
        map.serialize_entry("remote_digest", &self.digests.remote())?;
        map.serialize_entry("cached_digest", &self.digests.cached())?;
        map.serialize_entry("duration_ms", &self.duration_ms)?;
        map.serialize_entry("error", &self.error())?;
        map.serialize_entry("tool", &self.tool)?;
        map.serialize_entry("attempts", &self.attempts)?;
        map.serialize_entry("check_gets", &self.check_gets)?;
        /// An entry written only when it has a value.
        fn present<M: SerializeMap, T: Serialize + ?Sized>(
            map: &mut M,
            key: &str,
            value: Option<&T>,
        ) -> Result<(), M::Error> {
            value.map_or(Ok(()), |value| map.serialize_entry(key, value))
        }
        let details = self.details.as_deref();
        present(
            &mut map,
            "referrers",
            details.and_then(|d| d.referrers.as_ref()),
        )?;
        present(
            &mut map,
            "tag_moved",
            details.and_then(|d| d.tag_moved.as_ref()),
        )?;
        present(
            &mut map,
            "upstream_digest",
            details.and_then(|d| d.upstream_digest.as_ref()),
        )?;
        present(
            &mut map,
            "filtered_digest",
            details.and_then(|d| d.filtered_digest.as_ref()),
        )?;
        present(
            &mut map,
            "platforms",
            details.and_then(|d| d.platforms.as_ref()),
        )?;
        present(&mut map, "skipped_check", self.skipped_check.as_ref())?;
        present(&mut map, "selected_by", self.selected_by.as_deref())?;
        map.end()
    }
}

/// Per image, in the report: what happened to its signature, attestation, SBOM and
/// referrers-index tags that the upstream holds (tags the upstream lacks are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReferrerCounts {
    /// Copied in this run (missing in the cache, or a different digest there).
    pub copied: u32,
    /// Already in the cache with the upstream's digest.
    pub already_cached: u32,
    /// Could not be checked or copied (the next run tries again).
    pub failed: u32,
}

/// What the listing of one `tags:` entry cost and selected (`tag_lists` in the report).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TagList {
    /// `source` as written.
    pub image: String,
    /// The rules as written.
    pub rules: String,
    /// `tags/list` requests sent (pages and 401 challenges; 0 for `include` alone).
    pub requests: u32,
    /// Tags the upstream listed.
    pub listed: usize,
    /// The tags selected, highest first, then the `include`s.
    pub selected: Vec<crate::input::reference::Tag>,
    /// Why the listing failed, or null.
    pub error: Option<String>,
}

/// Counts by action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Images copied.
    pub pulled: usize,
    /// Images already cached.
    pub already_cached: usize,
    /// Images a dry run would copy.
    pub would_pull: usize,
    /// Images that failed.
    pub failed: usize,
    /// Images left for the next run (deadline or interruption).
    pub deferred: usize,
    /// All images.
    pub total: usize,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run ended (RFC 3339, UTC).
    pub timestamp: String,
    /// Whether this was a dry run (nothing written to the cache).
    pub dry_run: bool,
    /// `cache_registry` as written in the config.
    pub cache_registry: String,
    /// Counts by action.
    pub summary: Summary,
    /// The pull quota of every upstream registry that reported one (rate-limit headers),
    /// keyed by the registry as the config names it after normalisation (`docker.io`).
    pub quota: BTreeMap<String, QuotaReport>,
    /// One entry per image, in config order.
    pub results: Vec<ImageResult>,
    /// The shard this run synced (`--shard`, `--shard-count`): `results` holds only its
    /// images. Absent in an unsharded run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::input::shard::Shard>,
    /// One entry per `tags:` entry of the config: the listing's cost and what it selected.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tag_lists: Vec<TagList>,
    /// What `settings.prune` deleted after the run. Absent when it did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<crate::output::prune_report::PruneReport>,
    /// With `settings.coverage: cluster`: the cluster's images against the config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<CoverageReport>,
    /// The cache's lease (`--lease`): whether this run held it or copied nothing because
    /// another run did. Absent without `--lease`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<crate::output::lease_report::LeaseReport>,
}

/// `coverage` in the report: how many distinct images the cluster's workloads name, and
/// those no config entry covers; or, when the cluster could not be listed, why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CoverageReport {
    /// Distinct images found (absent when listing failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<usize>,
    /// Images no entry covers, normalised and sorted; invalid references included as
    /// written.
    pub uncovered: Vec<String>,
    /// Why the cluster could not be listed; the coverage is then unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// Builds a report, counting the results.
    pub fn new(cache_registry: &str, dry_run: bool, results: Vec<ImageResult>) -> Self {
        let mut summary = Summary {
            total: results.len(),
            ..Summary::default()
        };
        for result in &results {
            match result.action {
                Action::Pulled => summary.pulled += 1,
                Action::AlreadyCached => summary.already_cached += 1,
                Action::WouldPull => summary.would_pull += 1,
                Action::Failed => summary.failed += 1,
                Action::Deferred => summary.deferred += 1,
            }
        }
        Self {
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            dry_run,
            cache_registry: cache_registry.to_owned(),
            summary,
            quota: BTreeMap::new(),
            results,
            shard: None,
            tag_lists: Vec::new(),
            coverage: None,
            prune: None,
            lease: None,
        }
    }

    /// Writes the report as JSON plus a newline: pretty for a terminal, else on one line.
    /// The JSON is serialised straight into a buffered stdout, never built whole in memory
    /// (at 100,000 images it would be some 30 MB next to the results it copies). So that no
    /// log line of this process lands inside it where a container runtime merges both streams
    /// line by line (`kubectl logs`), stderr stays locked until the report's newline is out.
    /// A closed stdout (`| head`) is not an error worth failing the run for: the images were
    /// synced regardless.
    pub fn print(&self, out: &mut impl Write, pretty: bool) {
        let quiet = std::io::stderr().lock();
        let mut buffered = std::io::BufWriter::with_capacity(64 * 1024, out);
        let serialised = if pretty {
            serde_json::to_writer_pretty(&mut buffered, self)
        } else {
            serde_json::to_writer(&mut buffered, self)
        };
        let written = serialised
            .map_err(std::io::Error::from)
            .and_then(|()| buffered.write_all(b"\n"))
            .and_then(|()| buffered.flush());
        drop(quiet);
        if let Err(err) = written {
            tracing::warn!(error = %err, "could not write the report to stdout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(action: Action) -> ImageResult {
        ImageResult {
            image: "nginx".into(),
            tag: "1".into(),
            action,
            digests: Digests::Unknown,
            duration_ms: 1,
            tool: Some(Tool::Crane),
            attempts: 1,
            check_gets: 0,
            skipped_check: None,
            selected_by: None,
            details: None,
        }
    }

    #[test]
    fn the_summary_counts_every_action_and_keeps_the_seed_field_names() {
        let report = Report::new(
            "cache:5000",
            false,
            vec![
                result(Action::Pulled),
                result(Action::Failed),
                result(Action::AlreadyCached),
                result(Action::AlreadyCached),
            ],
        );
        let json = serde_json::to_value(&report).expect("serialises");
        assert_eq!(
            json["summary"],
            serde_json::json!({"pulled": 1, "already_cached": 2, "would_pull": 0, "failed": 1, "deferred": 0, "total": 4})
        );
        assert_eq!(json["results"][0]["action"], "pulled");
        assert_eq!(json["results"][2]["action"], "already_cached");
        assert_eq!(json["results"][0]["tool"], "crane");
        assert_eq!(json["results"][0]["cached_digest"], serde_json::Value::Null);
        assert_eq!(json["cache_registry"], "cache:5000");
        assert!(json["timestamp"].as_str().expect("string").ends_with('Z'));
        let keys: Vec<&str> = json["results"][0]
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "image",
            "tag",
            "action",
            "remote_digest",
            "cached_digest",
            "duration_ms",
            "error",
            "tool",
        ] {
            assert!(keys.contains(&key), "{key}");
        }
    }

    #[test]
    fn an_image_result_stays_small_as_every_one_is_kept_until_the_report() {
        // 100,000 images keep 100,000 results: a field added inline costs that many times.
        // Its digests are in line (no allocation), kept once when both are the same.
        assert!(
            std::mem::size_of::<ImageResult>() <= 128,
            "{}",
            std::mem::size_of::<ImageResult>()
        );
        assert!(std::mem::size_of::<Digests>() <= 48);
    }

    fn digest(byte: char) -> crate::input::reference::Digest {
        crate::input::reference::Digest::parse(&format!("sha256:{}", byte.to_string().repeat(64)))
            .expect("a digest")
    }

    #[test]
    fn a_result_is_written_with_the_seed_fields_first_then_only_the_details_it_has() {
        let (a, b) = (digest('a'), digest('b'));
        let cached = ImageResult {
            digests: Digests::new(Some(a.clone()), Some(a.clone())),
            selected_by: Some("include".into()),
            ..result(Action::AlreadyCached)
        };
        assert_eq!(cached.digests, Digests::Same(a.clone()));
        assert_eq!(
            serde_json::to_string(&cached).expect("serialises"),
            format!(
                r#"{{"image":"nginx","tag":"1","action":"already_cached","remote_digest":"{a}","cached_digest":"{a}","duration_ms":1,"error":null,"tool":"crane","attempts":1,"check_gets":0,"selected_by":"include"}}"#
            )
        );
        let failure = crate::registry::Failure::new(crate::registry::Class::WriteRefused, "no");
        let failed = ImageResult {
            digests: Digests::new(Some(b.clone()), Some(a.clone())),
            details: Details::of(Details {
                error: Some("refused".into()),
                failure: Some(failure),
                tag_moved: Some(true),
                upstream_digest: Some(a.clone()),
                platforms: Some(vec!["linux/amd64".into()]),
                ..Details::default()
            }),
            skipped_check: Some(crate::input::pins::SkippedCheck::Pinned),
            ..result(Action::Failed)
        };
        assert_eq!(failed.digests.remote(), Some(&b));
        assert_eq!(failed.digests.cached(), Some(&a));
        assert_eq!(
            failed.failure().map(|failure| failure.class),
            Some(crate::registry::Class::WriteRefused)
        );
        assert_eq!(
            serde_json::to_string(&failed).expect("serialises"),
            format!(
                r#"{{"image":"nginx","tag":"1","action":"failed","remote_digest":"{b}","cached_digest":"{a}","duration_ms":1,"error":"refused","tool":"crane","attempts":1,"check_gets":0,"tag_moved":true,"upstream_digest":"{a}","platforms":["linux/amd64"],"skipped_check":"pinned"}}"#
            )
        );
        let not_cached = Digests::new(Some(b.clone()), None);
        assert_eq!((not_cached.remote(), not_cached.cached()), (Some(&b), None));
        assert_eq!(Digests::new(None, None), Digests::Unknown);
        assert!(Details::of(Details::default()).is_none());
    }

    #[test]
    fn a_closed_stdout_does_not_panic() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        Report::new("c", true, vec![result(Action::WouldPull)]).print(&mut Closed, false);
    }

    #[test]
    fn off_a_terminal_the_report_is_one_line_so_merged_logs_cannot_split_it() {
        let report = Report::new("c", false, vec![result(Action::Pulled)]);
        let mut one_line = Vec::new();
        report.print(&mut one_line, false);
        let text = String::from_utf8(one_line).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.ends_with('\n'));
        // Streamed into stdout, byte for byte what the whole document serialises to.
        let whole = serde_json::to_string(&report).expect("serialises");
        assert_eq!(text, format!("{whole}\n"));
        let mut pretty = Vec::new();
        report.print(&mut pretty, true);
        let pretty = String::from_utf8(pretty).expect("utf-8");
        assert!(pretty.lines().count() > 10, "{pretty}");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            parsed,
            serde_json::from_str::<serde_json::Value>(&pretty).expect("json")
        );
    }
}
