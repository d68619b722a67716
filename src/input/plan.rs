//! The validated plan: every config value checked and resolved before anything runs.
//!
//! [`resolve`] turns a [`RawConfig`] into a [`Plan`] (parsed references, concrete
//! durations, cache targets) and reports every problem at once, each naming the image
//! (index and source) and the field.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::input::config::{RawConfig, RawImage, RawReserve, RawSettings};
use crate::input::reference::{self, Repository, Tag, shorten};
use crate::registry::quota::Reserve;

/// Default number of images processed at once.
pub const DEFAULT_CONCURRENCY: usize = 2;
/// Default bound on one copy.
pub const DEFAULT_PULL_TIMEOUT_SECS: u64 = 300;
/// Default bound on one digest check.
pub const DEFAULT_CHECK_TIMEOUT_SECS: u64 = 30;
/// Default number of digest checks at once: HEADs cost no quota, so they need not wait
/// for the copy bound.
pub const DEFAULT_CHECK_CONCURRENCY: usize = 8;
/// Upper bound on `check_concurrency`.
pub const MAX_CHECK_CONCURRENCY: u64 = 256;
/// Default number of retries of a transient failure, per step.
pub const DEFAULT_RETRIES: u64 = 2;
/// Upper bound on `retries`: more only hammers a registry that is struggling.
pub const MAX_RETRIES: u64 = 10;
/// Upper bound on `concurrency`: more parallel copies only get us rate limited.
pub const MAX_CONCURRENCY: u64 = 64;
/// Upper bound on any timeout (one day): a larger value is a unit mistake.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where the config came from (for messages).
    pub config_path: PathBuf,
    /// `cache_registry` as written (it is echoed in the report).
    pub cache_registry: String,
    /// The cache registry's host (`host[:port]`).
    pub cache_host: String,
    /// The images, in config order.
    pub jobs: Vec<Job>,
    /// The entries with tag rules (`tags:`), expanded into jobs at run time.
    pub selections: Vec<Selection>,
    /// Resolved settings.
    pub settings: Settings,
}

/// One image to keep cached: its tag and what depends on it, the rest shared with every
/// other tag of its config entry (`Job` derefs to [`Entry`]: `job.source`). Every job is
/// kept until the report, so a job is small: a 100,000-image run holds 100,000 of them.
#[derive(Debug, Clone)]
pub struct Job {
    /// What every tag of the config entry shares.
    pub entry: std::sync::Arc<Entry>,
    /// The tag to sync.
    pub tag: Tag,
    /// The tag matches `settings.immutable_tags`: when cached, not checked upstream.
    pub immutable: bool,
    /// For a tag chosen by tag rules: which rule selected it (shared by the tags it chose).
    pub selected_by: Option<std::sync::Arc<str>>,
}

impl std::ops::Deref for Job {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        &self.entry
    }
}

/// What the jobs of one config entry share.
#[derive(Debug)]
pub struct Entry {
    /// Position in the config, from 0.
    pub index: usize,
    /// `source` exactly as written (the report echoes it).
    pub image: std::sync::Arc<str>,
    /// The upstream repository, normalised.
    pub source: Repository,
    /// Where the image lands in the cache.
    pub target: Repository,
    /// Also sync its signatures, attestations and SBOMs (`referrers`, per image or in
    /// `settings`).
    pub referrers: bool,
    /// The digest the cache's tag must hold (`images[].digest`), if pinned.
    pub pin: Option<crate::input::reference::Digest>,
    /// For a pinned image: HEAD the upstream tag to notice when it moves.
    pub watch_tag: bool,
    /// The platforms to cache of a multi-arch image (`None`: every platform).
    pub platforms: crate::input::platforms::Filter,
}

/// An entry with tag rules: a job template (its `tag` a placeholder) and the rules.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The job each selected tag becomes, with the tag replaced.
    pub template: Job,
    /// The validated rules.
    pub rules: crate::input::tag_rules::Rules,
}

/// Resolved `settings`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Copies at once.
    pub concurrency: usize,
    /// Digest checks at once.
    pub check_concurrency: usize,
    /// Retries of a transient failure, per step.
    pub retries: u32,
    /// Past this much time from the start no new image starts (`deferred`).
    pub run_deadline: Option<Duration>,
    /// Bound on one copy.
    pub pull_timeout: Duration,
    /// Bound on one digest check.
    pub check_timeout: Duration,
    /// Exit 0 even when images failed.
    pub skip_on_error: bool,
    /// Hosts (`host[:port]`, lowercase) spoken to without TLS verification.
    pub insecure_registries: BTreeSet<String>,
    /// Who reads digests.
    pub digest_check: crate::registry::DigestCheck,
    /// Pulls kept in reserve per metered registry.
    pub quota_reserve: crate::registry::quota::Reserve,
    /// Where to push the run's metrics, from the config (the command line may override).
    pub pushgateway: Option<String>,
    /// A referrer that fails to sync fails its image (`settings.referrers_required`).
    pub referrers_required: bool,
    /// `settings.immutable_tags`, compiled and anchored.
    pub immutable_tags: Vec<regex::Regex>,
    /// At most this many OCI referrers synced per image (`settings.referrers_per_image`).
    pub referrers_per_image: usize,
    /// Tags per `tags/list` page (`n`).
    pub tag_page_size: u32,
    /// `settings.coverage: cluster`: list the cluster's images and report the uncovered.
    pub coverage: bool,
    /// `settings.platforms` (`None`: every platform).
    pub platforms: crate::input::platforms::Filter,
    /// `settings.prune`: prune after a successful, complete, unsharded run.
    pub prune: bool,
}

/// One thing wrong with the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `images[3] (source `nginx:1`) field `source``, `settings.concurrency`, ...
    pub location: String,
    /// What: a sentence fragment.
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug)]
pub struct PlanError {
    /// The config file.
    pub path: PathBuf,
    /// All problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let plural = if count == 1 { "" } else { "s" };
        write!(
            f,
            "invalid config {}: {count} problem{plural}",
            self.path.display()
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {}: {}", problem.location, problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanError {}

/// Validates a raw config into a plan, collecting every problem.
pub fn resolve(raw: RawConfig, config_path: &Path) -> Result<Plan, PlanError> {
    let mut problems = Vec::new();
    let mut problem =
        |location: String, message: String| problems.push(Problem { location, message });

    let cache = parse_cache_registry(&raw.cache_registry);
    if let Err(message) = &cache {
        problem("cache_registry".to_owned(), message.clone());
    }
    let settings = resolve_settings(&raw.settings, &mut problem);
    if raw.images.is_empty() {
        problem(
            "images".to_owned(),
            "is empty; list at least one image".to_owned(),
        );
    }

    let (immutable, bad_patterns) =
        crate::input::pins::immutable_patterns(&raw.settings.immutable_tags);
    for (location, message) in bad_patterns {
        problem(location, message);
    }
    let mut jobs = Vec::with_capacity(raw.images.len());
    let mut selections = Vec::new();
    let mut targets: HashMap<(String, String), usize> = HashMap::new();
    for (index, image) in raw.images.iter().enumerate() {
        let location = |field: &str| {
            format!(
                "images[{index}] (source `{}`) field `{field}`",
                shorten(&image.source)
            )
        };
        let rules = crate::input::tag_rules::check_entry(image, &mut |field, message| {
            problem(location(field), message)
        });
        if image.tag.is_empty() && image.tags.is_none() {
            // The usual cause, said at once: the tag was written into `source`.
            let hint = match Repository::parse_source(&image.source) {
                Err(reference::ReferenceError::TagInSource(tag)) => format!(
                    "; the tag is in `source`: move `{tag}` into `tag:` (`source: \"{}\"` and `tag: \"{tag}\"`)",
                    shorten(&image.source[..image.source.len().saturating_sub(tag.len() + 1)])
                ),
                _ => String::new(),
            };
            problem(
                location("tag"),
                format!("missing field `tag` (or `tags`, for tag rules){hint}"),
            );
            continue;
        }
        let pin = image.digest.as_deref().and_then(|raw| {
            crate::input::pins::parse_pin(raw)
                .map_err(|message| problem(location("digest"), message))
                .ok()
        });
        if image.watch_tag.is_some() && image.digest.is_none() {
            problem(
                location("watch_tag"),
                "applies to a pinned image only; add `digest` or remove `watch_tag`".to_owned(),
            );
        }
        let platforms = match &image.platforms {
            None => settings.as_ref().and_then(|s| s.platforms.clone()),
            Some(raw) => crate::input::platforms::parse_list(raw).unwrap_or_else(|found| {
                for (position, message) in found {
                    problem(location(&format!("platforms[{position}]")), message);
                }
                None
            }),
        };
        let resolved = resolve_image(image, cache.as_ref().ok(), |field, message| {
            problem(location(field), message)
        });
        let Some(job) = resolved.map(|(source, tag, target)| Job {
            immutable: crate::input::pins::is_immutable(&immutable, tag.as_str()),
            tag,
            selected_by: None,
            entry: std::sync::Arc::new(Entry {
                index,
                image: image.source.as_str().into(),
                source,
                target,
                referrers: image
                    .referrers
                    .unwrap_or(raw.settings.referrers.unwrap_or(false)),
                pin,
                watch_tag: image.watch_tag.unwrap_or(true),
                platforms: platforms.clone(),
            }),
        }) else {
            continue;
        };
        if let Some(rules) = rules {
            selections.push(Selection {
                template: job,
                rules,
            });
            continue;
        }
        let key = (job.target.to_string(), job.tag.to_string());
        if let Some(first) = targets.insert(key, index) {
            problem(
                location(if image.cache_as.is_some() {
                    "cache_as"
                } else {
                    "source"
                }),
                format!(
                    "lands on the same cache image `{}` as images[{first}]; set `cache_as` on one of them",
                    job.target.with_tag(&job.tag)
                ),
            );
        }
        jobs.push(job);
    }

    if let Ok((cache_host, _)) = &cache {
        let sources: Option<Vec<Repository>> = raw
            .images
            .iter()
            .map(|image| Repository::parse_source(&image.source).ok())
            .collect();
        // With a source that does not parse, its registry is unknown: no guessing then.
        if let Some(sources) = sources {
            let named: BTreeSet<&str> = std::iter::once(cache_host.as_str())
                .chain(sources.iter().map(Repository::host))
                .collect();
            for (i, entry) in raw.settings.insecure_registries.iter().enumerate() {
                let Ok(host) = reference::parse_host(entry) else {
                    continue; // reported with the settings
                };
                if !named.contains(host.as_str()) {
                    problem(
                        format!("settings.insecure_registries[{i}]"),
                        unlisted_insecure_entry(entry, &host, &named),
                    );
                }
            }
        }
    }

    match (cache, settings) {
        (Ok((cache_host, _)), Some(settings)) if problems.is_empty() => Ok(Plan {
            config_path: config_path.to_owned(),
            cache_registry: raw.cache_registry,
            cache_host,
            jobs,
            selections,
            settings: Settings {
                immutable_tags: immutable,
                ..settings
            },
        }),
        _ => Err(PlanError {
            path: config_path.to_owned(),
            problems,
        }),
    }
}

/// The message for an `insecure_registries` entry that names no registry of the config:
/// it would silently match nothing, and the cache would fail in the cluster instead.
fn unlisted_insecure_entry(entry: &str, host: &str, named: &BTreeSet<&str>) -> String {
    let (name, port) = reference::split_port(host);
    let same_name: Vec<&str> = named
        .iter()
        .copied()
        .filter(|known| reference::split_port(known).0 == name)
        .collect();
    let fix = match (same_name.first(), port) {
        (Some(known), None) => format!("add the port: `{known}`"),
        (Some(known), Some(_)) => format!("the port differs: write `{known}`"),
        (None, _) => "write the host exactly as in `cache_registry` or an image's `source` (with its port), or remove the entry".to_owned(),
    };
    let listed: Vec<String> = named.iter().map(|known| format!("`{known}`")).collect();
    format!(
        "`{}` names no registry of this config (it names {}); {fix}",
        shorten(entry),
        listed.join(", ")
    )
}

/// `host[:port]` plus an optional path prefix under which every image lands.
fn parse_cache_registry(raw: &str) -> Result<(String, Option<String>), String> {
    let (host, prefix) = match raw.split_once('/') {
        Some((host, prefix)) => (host, Some(prefix)),
        None => (raw, None),
    };
    if raw.contains("://") {
        return Err(format!(
            "`{}` has a URL scheme; write `host[:port]` and list plain-HTTP registries in `settings.insecure_registries`",
            shorten(raw)
        ));
    }
    let host = reference::parse_host(host).map_err(|err| format!("`{}` {err}", shorten(raw)))?;
    let prefix = prefix
        .map(|prefix| {
            reference::parse_path(prefix)
                .map_err(|err| format!("path prefix `{}` {err}", shorten(prefix)))
        })
        .transpose()?;
    Ok((host, prefix))
}

fn resolve_settings(
    raw: &RawSettings,
    problem: &mut impl FnMut(String, String),
) -> Option<Settings> {
    let mut ok = true;
    let mut bounded =
        |field: &str, value: Option<u64>, default: u64, (min, max): (u64, u64)| -> u64 {
            let value = value.unwrap_or(default);
            if value < min || value > max {
                problem(
                    format!("settings.{field}"),
                    format!("is {value}; it must be between {min} and {max}"),
                );
                ok = false;
            }
            value
        };
    let concurrency = bounded(
        "concurrency",
        raw.concurrency,
        DEFAULT_CONCURRENCY as u64,
        (1, MAX_CONCURRENCY),
    );
    let check_concurrency = bounded(
        "check_concurrency",
        raw.check_concurrency,
        DEFAULT_CHECK_CONCURRENCY as u64,
        (1, MAX_CHECK_CONCURRENCY),
    );
    let retries = bounded("retries", raw.retries, DEFAULT_RETRIES, (0, MAX_RETRIES));
    let tag_page_size = bounded(
        "tag_page_size",
        raw.tag_page_size,
        crate::input::tag_rules::DEFAULT_PAGE_SIZE,
        (1, crate::input::tag_rules::MAX_PAGE_SIZE),
    );
    let referrers_per_image = bounded(
        "referrers_per_image",
        raw.referrers_per_image,
        DEFAULT_REFERRERS_PER_IMAGE,
        (1, MAX_REFERRERS_PER_IMAGE),
    );
    let run_deadline = raw
        .run_deadline_secs
        .map(|secs| bounded("run_deadline_secs", Some(secs), secs, (1, MAX_TIMEOUT_SECS)));
    let pull = bounded(
        "pull_timeout_secs",
        raw.pull_timeout_secs,
        DEFAULT_PULL_TIMEOUT_SECS,
        (1, MAX_TIMEOUT_SECS),
    );
    let check = bounded(
        "check_timeout_secs",
        raw.check_timeout_secs,
        DEFAULT_CHECK_TIMEOUT_SECS.min(pull.max(1)),
        (1, MAX_TIMEOUT_SECS),
    );
    if raw.check_timeout_secs.is_some() && check > pull {
        problem(
            "settings.check_timeout_secs".to_owned(),
            format!(
                "is {check}, longer than `pull_timeout_secs` ({pull}); a digest check is never longer than a copy"
            ),
        );
        ok = false;
    }
    let mut insecure_registries = BTreeSet::new();
    for (i, entry) in raw.insecure_registries.iter().enumerate() {
        match reference::parse_host(entry) {
            Ok(host) => {
                insecure_registries.insert(host);
            }
            Err(err) => {
                problem(
                    format!("settings.insecure_registries[{i}]"),
                    format!("`{}` {err}", shorten(entry)),
                );
                ok = false;
            }
        }
    }
    let quota_reserve = match resolve_reserve(raw.quota_reserve.as_ref()) {
        Ok(reserve) => reserve,
        Err(message) => {
            problem("settings.quota_reserve".to_owned(), message);
            ok = false;
            crate::registry::quota::Reserve::default()
        }
    };
    let platforms = match &raw.platforms {
        None => None,
        Some(list) => match crate::input::platforms::parse_list(list) {
            Ok(filter) => filter,
            Err(found) => {
                for (position, message) in found {
                    problem(format!("settings.platforms[{position}]"), message);
                }
                ok = false;
                None
            }
        },
    };
    if let Some(url) = &raw.pushgateway
        && let Err(message) = check_pushgateway(url)
    {
        problem("settings.pushgateway".to_owned(), message);
        ok = false;
    }
    ok.then(|| Settings {
        concurrency: usize::try_from(concurrency).unwrap_or(DEFAULT_CONCURRENCY),
        check_concurrency: usize::try_from(check_concurrency).unwrap_or(DEFAULT_CHECK_CONCURRENCY),
        retries: u32::try_from(retries).unwrap_or(0),
        run_deadline: run_deadline.map(Duration::from_secs),
        pull_timeout: Duration::from_secs(pull),
        check_timeout: Duration::from_secs(check),
        skip_on_error: raw.skip_on_error.unwrap_or(false),
        insecure_registries,
        digest_check: raw.digest_check.unwrap_or_default(),
        quota_reserve,
        pushgateway: raw.pushgateway.clone(),
        referrers_required: raw.referrers_required.unwrap_or(false),
        immutable_tags: Vec::new(),
        tag_page_size: u32::try_from(tag_page_size).unwrap_or(100),
        coverage: raw.coverage == Some(crate::input::config::CoverageMode::Cluster),
        platforms,
        prune: raw.prune.unwrap_or(false),
        referrers_per_image: usize::try_from(referrers_per_image).unwrap_or(100),
    })
}

/// `settings.quota_reserve`: pulls (at most a million) or `N%` with N from 0 to 100.
fn resolve_reserve(raw: Option<&RawReserve>) -> Result<Reserve, String> {
    const MAX_PULLS: u64 = 1_000_000;
    let pulls = |count: u64| {
        if count <= MAX_PULLS {
            Ok(Reserve::Pulls(count))
        } else {
            Err(format!("is {count}; at most {MAX_PULLS} pulls"))
        }
    };
    match raw {
        None => Ok(Reserve::default()),
        Some(RawReserve::Pulls(count)) => pulls(*count),
        Some(RawReserve::Text(text)) => {
            let trimmed = text.trim();
            match trimmed.strip_suffix('%') {
                Some(percent) => match percent.trim().parse::<u8>() {
                    Ok(percent) if percent <= 100 => Ok(Reserve::Percent(percent)),
                    _ => Err(format!(
                        "`{}` is not a percentage from 0% to 100%",
                        shorten(text)
                    )),
                },
                None => trimmed
                    .parse()
                    .map_err(|_| {
                        format!(
                            "`{}` is neither a number of pulls nor a percentage like \"10%\"",
                            shorten(text)
                        )
                    })
                    .and_then(pulls),
            }
        }
    }
}

/// Default `settings.referrers_per_image`.
pub const DEFAULT_REFERRERS_PER_IMAGE: u64 = 100;
/// Upper bound on `settings.referrers_per_image` (the client refuses longer listings).
pub const MAX_REFERRERS_PER_IMAGE: u64 = 4_096;

/// A Pushgateway URL from any route (`settings.pushgateway`, `--pushgateway`,
/// `IMAGE_SYNC_PUSHGATEWAY`): an `http(s)://` URL without credentials. The message never
/// repeats credentials the URL carries.
pub fn check_pushgateway(url: &str) -> Result<(), String> {
    let shown = || shorten(&crate::registry::failure::redact(url));
    let parsed = reqwest::Url::parse(url).map_err(|_| format!("`{}` is not a URL", shown()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("`{}` must be an http:// or https:// URL", shown()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials (they would show in logs)".to_owned());
    }
    Ok(())
}

fn resolve_image(
    image: &RawImage,
    cache: Option<&(String, Option<String>)>,
    mut problem: impl FnMut(&str, String),
) -> Option<(Repository, Tag, Repository)> {
    let source = Repository::parse_source(&image.source)
        .map_err(|err| problem("source", format!("`{}` {err}", shorten(&image.source))))
        .ok();
    // With tag rules the tags come from the upstream at run time: a placeholder here.
    let written = if image.tags.is_some() {
        crate::input::tag_rules::PLACEHOLDER
    } else {
        image.tag.as_str()
    };
    let tag = Tag::parse(written)
        .map_err(|err| problem("tag", format!("`{}` {err}", shorten(written))))
        .ok();
    let cache_as = match &image.cache_as {
        Some(path) => reference::parse_path(path)
            .map(Some)
            .map_err(|err| problem("cache_as", format!("`{}` {err}", shorten(path))))
            .ok()?,
        None => None,
    };
    let (source, tag, (cache_host, prefix)) = (source?, tag?, cache?);
    let path = cache_as.unwrap_or_else(|| source.path().to_owned());
    let path = match prefix {
        Some(prefix) => format!("{prefix}/{path}"),
        None => path,
    };
    let full_len = cache_host.len() + 1 + path.len();
    if full_len > reference::MAX_NAME_LEN {
        let field = if image.cache_as.is_some() {
            "cache_as"
        } else {
            "source"
        };
        problem(
            field,
            format!(
                "gives the cache image name `{cache_host}/{}` of {full_len} characters; the limit is {}",
                shorten(&path),
                reference::MAX_NAME_LEN
            ),
        );
        return None;
    }
    Some((source, tag, Repository::new(cache_host, &path)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::config;

    fn plan(yaml: &str) -> Result<Plan, PlanError> {
        resolve(
            config::parse(yaml.as_bytes()).expect("yaml parses"),
            Path::new("test.yaml"),
        )
    }

    fn problems(yaml: &str) -> Vec<String> {
        match plan(yaml) {
            Ok(_) => panic!("expected problems"),
            Err(err) => err
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.location, p.message))
                .collect(),
        }
    }

    #[test]
    fn default_cache_paths_drop_the_registry_host() {
        let plan = plan(
            "cache_registry: cache:5000\nimages:\n  - {source: nginx, tag: '1.27'}\n  - {source: ghcr.io/project-zot/zot-linux-amd64, tag: v2.1.2}\n  - {source: 127.0.0.1:5001/team/app, tag: v1}\n  - {source: docker.io/library/redis, tag: '7', cache_as: mirror/redis}\n",
        )
        .expect("valid");
        let targets: Vec<String> = plan
            .jobs
            .iter()
            .map(|j| j.target.with_tag(&j.tag))
            .collect();
        assert_eq!(
            targets,
            [
                "cache:5000/library/nginx:1.27",
                "cache:5000/project-zot/zot-linux-amd64:v2.1.2",
                "cache:5000/team/app:v1",
                "cache:5000/mirror/redis:7"
            ]
        );
        assert_eq!(&*plan.jobs[0].image, "nginx");
        assert_eq!(plan.settings.concurrency, 2);
        assert_eq!(plan.settings.check_concurrency, 8);
        assert_eq!(plan.settings.retries, 2);
        assert_eq!(plan.settings.run_deadline, None);
        assert_eq!(plan.settings.pull_timeout, Duration::from_secs(300));
        assert_eq!(plan.settings.check_timeout, Duration::from_secs(30));
        assert!(!plan.settings.skip_on_error);
    }

    #[test]
    fn a_tag_left_in_source_without_a_tag_field_says_where_to_move_it() {
        let found = problems("cache_registry: c\nimages:\n  - source: \"nginx:1.27-alpine\"\n");
        assert_eq!(
            found,
            [
                "images[0] (source `nginx:1.27-alpine`) field `tag`: missing field `tag` (or `tags`, for tag rules); the tag is in `source`: move `1.27-alpine` into `tag:` (`source: \"nginx\"` and `tag: \"1.27-alpine\"`)"
            ]
        );
        // A port is not a tag.
        let found = problems("cache_registry: c\nimages:\n  - source: \"127.0.0.1:5000/app\"\n");
        assert!(!found.iter().any(|p| p.contains("move")), "{found:?}");
    }

    #[test]
    fn quota_reserves_and_pushgateways_are_validated() {
        let with = |settings: &str| {
            plan(&format!(
                "cache_registry: c:5000\nimages:\n  - {{source: nginx, tag: x}}\nsettings:\n{settings}"
            ))
        };
        let reserve = |settings: &str| with(settings).expect("valid").settings.quota_reserve;
        assert_eq!(reserve("  retries: 1\n"), Reserve::Percent(10));
        assert_eq!(reserve("  quota_reserve: 5\n"), Reserve::Pulls(5));
        assert_eq!(reserve("  quota_reserve: \"5\"\n"), Reserve::Pulls(5));
        assert_eq!(reserve("  quota_reserve: \"25%\"\n"), Reserve::Percent(25));
        assert_eq!(reserve("  quota_reserve: 0\n"), Reserve::Pulls(0));
        for bad in ["\"110%\"", "\"ten\"", "\"-5%\"", "2000000"] {
            let problems = problems(&format!(
                "cache_registry: c:5000\nimages:\n  - {{source: nginx, tag: x}}\nsettings:\n  quota_reserve: {bad}\n"
            ));
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with("settings.quota_reserve: ")),
                "{bad}: {problems:?}"
            );
        }
        assert_eq!(
            with("  pushgateway: \"http://pg:9091\"\n")
                .expect("valid")
                .settings
                .pushgateway
                .as_deref(),
            Some("http://pg:9091")
        );
        for bad in ["ftp://pg", "not a url", "http://user:pw@pg:9091"] {
            let problems = problems(&format!(
                "cache_registry: c:5000\nimages:\n  - {{source: nginx, tag: x}}\nsettings:\n  pushgateway: \"{bad}\"\n"
            ));
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with("settings.pushgateway: ")),
                "{bad}: {problems:?}"
            );
            assert!(!problems.iter().any(|p| p.contains("pw@")), "{problems:?}");
        }
    }

    #[test]
    fn a_cache_path_prefix_is_kept() {
        let plan =
            plan("cache_registry: cache:5000/mirror\nimages:\n  - {source: nginx, tag: x}\n")
                .expect("valid");
        assert_eq!(
            plan.jobs[0].target.to_string(),
            "cache:5000/mirror/library/nginx"
        );
        assert_eq!(plan.cache_host, "cache:5000");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = problems(
            "cache_registry: http://cache\nimages:\n  - {source: 'nginx:1.27', tag: '-x'}\n  - {source: redis, tag: '7', cache_as: 'A/B'}\nsettings:\n  concurrency: 0\n  pull_timeout_secs: 10\n  check_timeout_secs: 20\n  insecure_registries: ['cache/x']\n",
        );
        let expected_fragments = [
            "cache_registry: `http://cache` has a URL scheme",
            "settings.concurrency: is 0",
            "settings.check_timeout_secs: is 20, longer than `pull_timeout_secs` (10)",
            "settings.insecure_registries[0]",
            "images[0] (source `nginx:1.27`) field `source`: `nginx:1.27` contains a tag",
            "images[0] (source `nginx:1.27`) field `tag`: `-x` starts with `-`",
            "images[1] (source `redis`) field `cache_as`: `A/B` has an invalid path component `A`",
        ];
        for fragment in expected_fragments {
            assert!(
                found.iter().any(|p| p.starts_with(fragment)),
                "missing {fragment:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), expected_fragments.len(), "{found:#?}");
    }

    #[test]
    fn an_insecure_entry_must_name_a_registry_of_the_config() {
        let config = |entry: &str| {
            format!(
                "cache_registry: Cache.Local:5000/mirror\nimages:\n  - {{source: nginx, tag: x}}\n  - {{source: 127.0.0.1:5001/a, tag: x}}\nsettings:\n  insecure_registries: ['{entry}']\n"
            )
        };
        for ok in ["cache.local:5000", "CACHE.local:5000", "127.0.0.1:5001"] {
            let plan = plan(&config(ok)).expect(ok);
            assert_eq!(plan.settings.insecure_registries.len(), 1);
        }
        assert_eq!(
            problems(&config("cache.local")),
            [
                "settings.insecure_registries[0]: `cache.local` names no registry of this config (it names `127.0.0.1:5001`, `cache.local:5000`, `docker.io`); add the port: `cache.local:5000`"
            ]
        );
        assert!(
            problems(&config("127.0.0.1:5000"))[0]
                .ends_with("the port differs: write `127.0.0.1:5001`")
        );
        assert!(problems(&config("other:5000"))[0].ends_with(
            "write the host exactly as in `cache_registry` or an image's `source` (with its port), or remove the entry"
        ));
    }

    #[test]
    fn duplicate_cache_targets_are_an_error() {
        let found = problems(
            "cache_registry: c\nimages:\n  - {source: nginx, tag: x}\n  - {source: docker.io/library/nginx, tag: x}\n  - {source: ghcr.io/a/b, tag: x, cache_as: library/nginx}\n",
        );
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].starts_with("images[1] (source `docker.io/library/nginx`) field `source`: lands on the same cache image `c/library/nginx:x` as images[0]"));
        assert!(found[1].contains("images[2]") && found[1].contains("field `cache_as`"));
    }

    #[test]
    fn check_timeout_defaults_to_at_most_the_pull_timeout() {
        let plan = plan(
            "cache_registry: c\nimages: [{source: a, tag: b}]\nsettings: {pull_timeout_secs: 10}\n",
        )
        .expect("valid");
        assert_eq!(plan.settings.check_timeout, Duration::from_secs(10));
    }

    #[test]
    fn empty_images_and_huge_values_are_refused() {
        assert_eq!(
            problems("cache_registry: c\nimages: []\n"),
            ["images: is empty; list at least one image"]
        );
        let found = problems(
            "cache_registry: c\nimages: [{source: a, tag: b}]\nsettings: {pull_timeout_secs: 999999999}\n",
        );
        assert!(found[0].starts_with("settings.pull_timeout_secs: is 999999999"));
    }

    #[test]
    fn hostile_values_are_shortened_and_escaped_in_messages() {
        let long = "a".repeat(10_000);
        let found = problems(&format!(
            "cache_registry: c\nimages: [{{source: \"x\\n--rm {long}\", tag: b}}]\n"
        ));
        assert!(found[0].len() < 400, "{}", found[0]);
        assert!(found[0].contains("x\\n--rm"), "{}", found[0]);
    }

    #[test]
    fn a_job_stays_small_as_every_one_is_kept_until_the_report() {
        // 100,000 images keep 100,000 jobs: what the tags of an entry share is shared.
        assert!(
            std::mem::size_of::<Job>() <= 64,
            "{}",
            std::mem::size_of::<Job>()
        );
    }
}
