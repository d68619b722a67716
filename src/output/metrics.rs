//! The run's outcome as Prometheus gauges: written to a file (`--metrics-file`, atomically)
//! and pushed to a Pushgateway (`--pushgateway`), the one valid use of a Pushgateway being
//! the outcome of a batch job.
//!
//! A successful run PUTs the whole group (`last_success_timestamp_seconds` included); any
//! other run POSTs its metrics without that gauge, so a failure never erases the time of
//! the last success that an alert watches. A push that fails is a warning: it never
//! changes the report or the exit code.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::output::report::{Action, Report};
use crate::registry::Side;

/// The Pushgateway job name (`URL/metrics/job/image_sync`).
pub const JOB: &str = "image_sync";

/// Bound on one push: a slow Pushgateway must not hold the CronJob.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// What a finished run tells the metrics.
#[derive(Debug)]
pub struct RunFigures<'a> {
    /// The report printed on stdout.
    pub report: &'a Report,
    /// The exit code the run ends with.
    pub exit_code: u8,
    /// When the run started.
    pub started: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// Upstream manifest requests by registry: (HEADs, GETs).
    pub requests: BTreeMap<String, (u64, u64)>,
    /// The last reported (limit, remaining) by metered registry.
    pub limits: BTreeMap<String, (u64, u64)>,
    /// A signal (SIGINT/SIGTERM) stopped the run.
    pub interrupted: bool,
}

impl RunFigures<'_> {
    /// Every image synced, already cached, or deferred, and the run not interrupted.
    pub fn succeeded(&self) -> bool {
        self.report.summary.failed == 0 && !self.interrupted
    }
}

type Labels = Vec<(String, String)>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let gauge = Gauge::<f64, AtomicU64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

fn family(registry: &mut Registry, name: &str, help: &str, series: Vec<(Labels, f64)>) {
    let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (labels, value) in series {
        family.get_or_create(&labels).set(value);
    }
    registry.register(name, help, family);
}

/// Failed images counted by (class, side, host); the side and host are empty when the
/// failure names none (a local error, an internal one).
fn failures(report: &Report) -> Vec<(Labels, f64)> {
    let mut counts: BTreeMap<(&str, &str, &str), u32> = BTreeMap::new();
    for result in &report.results {
        if result.action != Action::Failed {
            continue;
        }
        let key = result.failure().map_or(("other", "", ""), |failure| {
            (
                failure.class.label(),
                failure.side.map_or("", Side::as_str),
                failure.host.as_deref().unwrap_or(""),
            )
        });
        *counts.entry(key).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((class, side, host), count)| {
            (
                vec![
                    ("class".to_owned(), class.to_owned()),
                    ("side".to_owned(), side.to_owned()),
                    ("host".to_owned(), host.to_owned()),
                ],
                f64::from(count),
            )
        })
        .collect()
}

fn seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The exposition text; `with_success` adds `last_success_timestamp_seconds` (the end of
/// this run).
pub fn render(figures: &RunFigures<'_>, with_success: bool) -> String {
    let mut registry = Registry::with_prefix("image_sync");
    let ended = figures.started + figures.duration;
    gauge(
        &mut registry,
        "last_run_timestamp_seconds",
        "When the last run ended (Unix time).",
        seconds(ended),
    );
    if with_success {
        gauge(
            &mut registry,
            "last_success_timestamp_seconds",
            "When the last run without a failed image ended (Unix time).",
            seconds(ended),
        );
    }
    gauge(
        &mut registry,
        "run_duration_seconds",
        "How long the last run took.",
        figures.duration.as_secs_f64(),
    );
    gauge(
        &mut registry,
        "exit_code",
        "The last run's exit code (0 ok, 1 images failed, 130/143 interrupted).",
        f64::from(figures.exit_code),
    );
    let summary = &figures.report.summary;
    let actions = [
        (Action::Pulled, summary.pulled),
        (Action::AlreadyCached, summary.already_cached),
        (Action::WouldPull, summary.would_pull),
        (Action::Failed, summary.failed),
        (Action::Deferred, summary.deferred),
    ];
    family(
        &mut registry,
        "images",
        "Images of the last run by action.",
        actions
            .iter()
            .map(|(action, count)| {
                (
                    vec![("action".to_owned(), action.as_str().to_owned())],
                    *count as f64,
                )
            })
            .collect(),
    );
    family(
        &mut registry,
        "failures",
        "Failed images of the last run by their failure's class, side (upstream, cache, local) and registry host.",
        failures(figures.report),
    );
    family(
        &mut registry,
        "manifest_requests",
        "Upstream manifest requests of the last run (a GET is a pull on Docker Hub).",
        figures
            .requests
            .iter()
            .flat_map(|(registry, (heads, gets))| {
                [("HEAD", *heads), ("GET", *gets)].map(|(method, count)| {
                    (
                        vec![
                            ("registry".to_owned(), registry.clone()),
                            ("method".to_owned(), method.to_owned()),
                        ],
                        count as f64,
                    )
                })
            })
            .collect(),
    );
    if let Some(coverage) = &figures.report.coverage {
        gauge(
            &mut registry,
            "coverage_ok",
            "1 when the last run listed the cluster's workloads for coverage, 0 when it could not (coverage unknown).",
            if coverage.error.is_none() { 1.0 } else { 0.0 },
        );
        if let Some(images) = coverage.images {
            gauge(
                &mut registry,
                "cluster_images",
                "Distinct images the cluster's workloads name (settings.coverage: cluster).",
                images as f64,
            );
            gauge(
                &mut registry,
                "uncovered_images",
                "Images the cluster's workloads name that no config entry covers.",
                coverage.uncovered.len() as f64,
            );
        }
    }
    gauge(
        &mut registry,
        "tag_list_requests",
        "Upstream tags/list requests of the last run (tag rules; not pulls).",
        f64::from(
            figures
                .report
                .tag_lists
                .iter()
                .map(|list| list.requests)
                .sum::<u32>(),
        ),
    );
    family(
        &mut registry,
        "tag_moved",
        "Pinned images whose watched upstream tag points elsewhere than the pin (1) or at it (0).",
        figures
            .report
            .results
            .iter()
            .filter_map(|result| {
                result.tag_moved().map(|moved| {
                    (
                        vec![
                            ("image".to_owned(), result.image.to_string()),
                            ("tag".to_owned(), result.tag.to_string()),
                        ],
                        f64::from(u8::from(moved)),
                    )
                })
            })
            .collect(),
    );
    let per_registry = |pick: fn(&(u64, u64)) -> u64| {
        figures
            .limits
            .iter()
            .map(|(registry, values)| {
                (
                    vec![("registry".to_owned(), registry.clone())],
                    pick(values) as f64,
                )
            })
            .collect()
    };
    family(
        &mut registry,
        "ratelimit_limit",
        "Pulls per window the registry reported.",
        per_registry(|(limit, _)| *limit),
    );
    family(
        &mut registry,
        "ratelimit_remaining",
        "Pulls left the registry last reported.",
        per_registry(|(_, remaining)| *remaining),
    );
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// Writes the metrics next to `path`, then renames them over it, so that a reader (a
/// node-exporter textfile collector) never sees half a file.
pub fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics".to_owned());
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

/// Pushes to `URL/metrics/job/image_sync` (`.../shard/INDEX` for a shard, so that the
/// pods of an Indexed Job do not replace each other's group): PUT after a success, POST
/// otherwise.
pub async fn push(
    base: &str,
    text: String,
    success: bool,
    shard: Option<crate::input::shard::Shard>,
) -> Result<(), String> {
    let group = shard.map_or_else(String::new, |shard| format!("/shard/{}", shard.index));
    let url = format!("{}/metrics/job/{JOB}{group}", base.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .user_agent(concat!("image-sync/", env!("CARGO_PKG_VERSION")))
        .timeout(PUSH_TIMEOUT)
        .build()
        .map_err(|err| err.to_string())?;
    let request = if success {
        client.put(&url)
    } else {
        client.post(&url)
    };
    let response = request
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(text)
        .send()
        .await
        .map_err(|err| crate::registry::failure::redact(&err.to_string()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = response.text().await.unwrap_or_default();
        Err(format!(
            "{}: {status} {}",
            crate::registry::failure::redact(&url),
            crate::registry::failure::redact(body.trim())
        ))
    }
}

/// Writes and pushes the metrics as asked; failures are warnings.
pub async fn publish(figures: &RunFigures<'_>, file: Option<&Path>, pushgateway: Option<&str>) {
    let success = figures.succeeded();
    if let Some(path) = file {
        // The file is read alone: it always says when the run ended; the last success
        // lives in the Pushgateway (or in kube-state-metrics' CronJob status).
        match write_file(path, &render(figures, success)) {
            Ok(()) => tracing::debug!(path = %path.display(), "metrics written"),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot write the metrics file")
            }
        }
    }
    if let Some(url) = pushgateway {
        // Validated on every route; redacted all the same, as every logged URL is.
        let shown = crate::registry::failure::redact(url);
        let url_shown = &shown;
        match push(url, render(figures, success), success, figures.report.shard).await {
            Ok(()) => {
                tracing::info!(pushgateway = %url_shown, replaced = success, "metrics pushed");
            }
            Err(err) => tracing::warn!(
                pushgateway = %url_shown,
                error = %err,
                "cannot push the metrics; the run's outcome is unchanged"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::report::ImageResult;

    fn figures(report: &Report) -> RunFigures<'_> {
        RunFigures {
            report,
            exit_code: 0,
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_millis(2_500),
            requests: BTreeMap::from([("docker.io".to_owned(), (5, 2))]),
            limits: BTreeMap::from([("docker.io".to_owned(), (100, 87))]),
            interrupted: false,
        }
    }

    #[test]
    fn every_gauge_is_rendered_with_labels_and_zeros() {
        let report = Report::new("cache:5000", false, Vec::<ImageResult>::new());
        let text = render(&figures(&report), true);
        for line in [
            "image_sync_last_run_timestamp_seconds 1700000002.5",
            "image_sync_last_success_timestamp_seconds 1700000002.5",
            "image_sync_run_duration_seconds 2.5",
            "image_sync_exit_code 0.0",
            "image_sync_images{action=\"failed\"} 0.0",
            "image_sync_images{action=\"already_cached\"} 0.0",
            "image_sync_manifest_requests{registry=\"docker.io\",method=\"GET\"} 2.0",
            "image_sync_manifest_requests{registry=\"docker.io\",method=\"HEAD\"} 5.0",
            "image_sync_ratelimit_limit{registry=\"docker.io\"} 100.0",
            "image_sync_ratelimit_remaining{registry=\"docker.io\"} 87.0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        let without = render(&figures(&report), false);
        assert!(!without.contains("last_success"), "{without}");
    }

    #[test]
    fn failed_images_are_counted_by_class_side_and_host() {
        use crate::registry::{Class, Failure};
        let failed = |failure: Option<Failure>| ImageResult {
            image: "nginx".into(),
            tag: "1".into(),
            action: Action::Failed,
            digests: crate::output::report::Digests::Unknown,
            duration_ms: 1,
            tool: None,
            attempts: 1,
            check_gets: 0,

            skipped_check: None,
            selected_by: None,
            details: crate::output::report::Details::with_error("failed".into(), failure),
        };
        let missing =
            Failure::new(Class::ManifestUnknown, "nginx:1").on(Side::Upstream, Some("docker.io"));
        let refused = Failure::new(Class::WriteRefused, "x").on(Side::Cache, Some("cache:5000"));
        let mut pulled = failed(None);
        pulled.action = Action::Pulled;
        let report = Report::new(
            "cache:5000",
            false,
            vec![
                failed(Some(missing.clone())),
                failed(Some(refused)),
                failed(Some(missing)),
                failed(Some(Failure::new(Class::Local, "disk full"))),
                pulled,
            ],
        );
        let text = render(&figures(&report), false);
        for line in [
            "image_sync_failures{class=\"manifest_unknown\",side=\"upstream\",host=\"docker.io\"} 2.0",
            "image_sync_failures{class=\"write_refused\",side=\"cache\",host=\"cache:5000\"} 1.0",
            "image_sync_failures{class=\"local\",side=\"\",host=\"\"} 1.0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert_eq!(text.matches("image_sync_failures{").count(), 3, "{text}");
        // A run without a failed image writes no series.
        let clean = Report::new("cache:5000", false, Vec::<ImageResult>::new());
        assert!(!render(&figures(&clean), true).contains("image_sync_failures{"));
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("image_sync.prom");
        write_file(&path, "a 1\n").expect("write");
        write_file(&path, "b 2\n").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "b 2\n");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            1,
            "no temporary left"
        );
    }
}
