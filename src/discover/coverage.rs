//! Which discovered images the config's cache would not serve (`uncovered`) and which
//! config entries no discovered image uses (`unused`).
//!
//! A config entry covers a reference when the reference names the same repository, after
//! normalisation, as the entry's `source` (nodes pull the upstream name through a containerd
//! mirror) or as its place in the cache (`cache_registry` with its path prefix, and
//! `cache_as` when set: pods that name the cache directly), and then:
//! - a reference by tag: the entry's `tag` is that tag, or its tag rules select it
//!   (`include`, `semver`, `regex`/`exclude`; `latest: N` is not checked, it depends on the
//!   upstream's list);
//! - a reference by digest: the entry is pinned to that digest (`digest:`). An unpinned
//!   entry follows its tag upstream, so it holds the digest only until the tag moves.

use serde::Serialize;

use crate::discover::inventory::{Invalid, Inventory};
use crate::input::plan::{Job, Plan};
use crate::input::reference::ImageRef;

/// The outcome of a coverage check (`--against`, and `coverage:` in a run's report).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// Distinct images found.
    #[serde(skip)]
    pub images: usize,
    /// Images found that no config entry covers, normalised and sorted.
    pub uncovered: Vec<String>,
    /// Config entries that cover no image found, in config order.
    pub unused: Vec<String>,
    /// References found that do not parse, with where.
    pub invalid: Vec<Invalid>,
}

impl Coverage {
    /// Whether every image found is covered and every reference parsed.
    pub fn complete(&self) -> bool {
        self.uncovered.is_empty() && self.invalid.is_empty()
    }
}

/// Checks the images of `inventory` against the entries of `plan`.
pub fn check(plan: &Plan, inventory: &Inventory) -> Coverage {
    let mut used_jobs = vec![false; plan.jobs.len()];
    let mut used_selections = vec![false; plan.selections.len()];
    let mut uncovered = Vec::new();
    for entry in inventory.entries() {
        let mut covered = false;
        for (job, used) in plan.jobs.iter().zip(used_jobs.iter_mut()) {
            if job_covers(job, &entry.image) {
                *used = true;
                covered = true;
            }
        }
        for (selection, used) in plan.selections.iter().zip(used_selections.iter_mut()) {
            let same_repository = names_repository(&selection.template, &entry.image);
            let selected = entry
                .image
                .pulled_tag()
                .is_some_and(|tag| crate::input::tag_rules::matches(&selection.rules, &tag));
            if same_repository && selected {
                *used = true;
                covered = true;
            }
        }
        if !covered {
            uncovered.push(entry.image.to_string());
        }
    }
    let mut unused = Vec::new();
    for (job, used) in plan.jobs.iter().zip(&used_jobs) {
        if !used {
            unused.push(match &job.pin {
                Some(pin) => format!("{}@{pin}", job.source.with_tag(&job.tag)),
                None => job.source.with_tag(&job.tag),
            });
        }
    }
    for (selection, used) in plan.selections.iter().zip(&used_selections) {
        if !used {
            unused.push(format!(
                "{} (tags: {})",
                selection.template.source,
                selection.rules.describe()
            ));
        }
    }
    Coverage {
        images: inventory.len(),
        uncovered,
        unused,
        invalid: inventory.invalid().cloned().collect(),
    }
}

fn names_repository(job: &Job, image: &ImageRef) -> bool {
    *image.repository() == job.source || *image.repository() == job.target
}

fn job_covers(job: &Job, image: &ImageRef) -> bool {
    if !names_repository(job, image) {
        return false;
    }
    match (image.digest(), image.pulled_tag()) {
        (Some(digest), _) => job.pin.as_ref() == Some(digest),
        (None, Some(tag)) => tag == job.tag,
        (None, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::workload::{FoundIn, Sighting};

    fn plan(images: &str) -> Plan {
        let text = format!("cache_registry: cache.local:5000/mirror\nimages:\n{images}");
        let raw: crate::input::config::RawConfig = serde_yaml_ng::from_str(&text).expect("yaml");
        crate::input::plan::resolve(raw, std::path::Path::new("c.yaml")).expect("valid")
    }

    fn inventory(images: &[&str]) -> Inventory {
        Inventory::from_sightings(images.iter().map(|image| Sighting {
            image: Some((*image).to_owned()),
            found_in: FoundIn {
                kind: "Pod".to_owned(),
                namespace: Some("n".to_owned()),
                name: "p".to_owned(),
                container: "c".to_owned(),
                file: None,
            },
        }))
    }

    #[test]
    fn sources_cache_paths_tags_rules_and_pins_cover() {
        let hex = "d".repeat(64);
        let other = "e".repeat(64);
        let plan = plan(&format!(
            "  - {{source: nginx, tag: \"1.27\"}}\n  - {{source: ghcr.io/org/app, tag: v1, cache_as: apps/app}}\n  - {{source: quay.io/x/pinned, tag: \"2\", digest: \"sha256:{hex}\"}}\n  - {{source: redis, tags: {{semver: \">=7, <8\"}}}}\n  - {{source: unused/thing, tag: \"1\"}}\n  - {{source: alpine, tags: {{include: [\"3.20\"]}}}}\n"
        ));
        let found = inventory(&[
            "nginx:1.27",
            "docker.io/library/nginx:1.27",
            "nginx",
            "cache.local:5000/mirror/apps/app:v1",
            "ghcr.io/org/app:v1",
            "ghcr.io/org/app:v2",
            &format!("quay.io/x/pinned:2@sha256:{hex}"),
            &format!("quay.io/x/pinned@sha256:{other}"),
            "redis:7.2.4",
            "redis:6.0.0",
            "bad image",
        ]);
        let coverage = check(&plan, &found);
        assert_eq!(
            coverage.uncovered,
            [
                "docker.io/library/nginx:latest".to_owned(),
                "docker.io/library/redis:6.0.0".to_owned(),
                "ghcr.io/org/app:v2".to_owned(),
                format!("quay.io/x/pinned@sha256:{other}"),
            ]
        );
        assert_eq!(
            coverage.unused,
            [
                "docker.io/unused/thing:1".to_owned(),
                "docker.io/library/alpine (tags: include [3.20])".to_owned()
            ]
        );
        assert_eq!(coverage.invalid.len(), 1);
        assert!(!coverage.complete());
    }
}
