//! Tag listing at run time: each `images[].tags` entry's upstream tags are listed (one
//! paginated `tags/list` through the built-in client), the rules of
//! [`crate::input::tag_rules`] select from them, and every selected tag becomes a job of
//! its own. The listing's cost and outcome are recorded for the report (`tag_lists`).

use crate::input::tag_rules::select;
use crate::output::report::TagList;

/// Lists and selects the tags of every `tags:` entry, adding one job per selected tag to
/// `plan.jobs` (config order kept; a tag another entry already syncs to the same cache
/// image is left to that entry). Returns what each listing cost and, for a listing that
/// failed, a failed result with the entry's config index.
pub async fn expand(
    plan: &mut crate::input::plan::Plan,
    toolbox: &crate::registry::Toolbox,
    cancel: &crate::process::Cancel,
) -> (
    Vec<TagList>,
    Vec<(usize, crate::output::report::ImageResult)>,
) {
    let mut lists = Vec::new();
    let mut failed = Vec::new();
    let selections = std::mem::take(&mut plan.selections);
    let mut taken: std::collections::HashSet<(String, String)> = plan
        .jobs
        .iter()
        .map(|job| (job.target.to_string(), job.tag.to_string()))
        .collect();
    let timeout = plan.settings.check_timeout;
    for selection in &selections {
        let template = &selection.template;
        let (listed, requests) = if selection.rules.needs_listing() {
            // A signal stops the listings too: what is not listed fails as interrupted.
            let mut cancelled = cancel.clone();
            let stopped = || {
                crate::registry::Failure::new(
                    crate::registry::Class::Interrupted,
                    format!("before the tags of {} were listed", template.source),
                )
            };
            if *cancelled.borrow() {
                (Err(stopped()), 0)
            } else {
                tokio::select! {
                    listed = toolbox.list_tags(&template.source, plan.settings.tag_page_size, timeout) => {
                        (listed.tags, listed.requests)
                    }
                    _ = cancelled.wait_for(|cancelled| *cancelled) => (Err(stopped()), 0),
                }
            }
        } else {
            (Ok(Vec::new()), 0)
        };
        let mut list = TagList {
            image: template.image.clone(),
            rules: selection.rules.describe().to_owned(),
            requests,
            listed: 0,
            selected: Vec::new(),
            error: None,
        };
        match listed {
            Ok(tags) => {
                list.listed = tags.len();
                for chosen in select(&selection.rules, &tags) {
                    let key = (template.target.to_string(), chosen.tag.to_string());
                    if !taken.insert(key) {
                        tracing::warn!(image = %template.image, tag = %chosen.tag, "selected by tag rules, but another entry already syncs this tag to the same cache image; left to that entry");
                        continue;
                    }
                    list.selected.push(chosen.tag.to_string());
                    plan.jobs.push(crate::input::plan::Job {
                        immutable: crate::input::pins::is_immutable(
                            &plan.settings.immutable_tags,
                            chosen.tag.as_str(),
                        ),
                        tag: chosen.tag,
                        selected_by: Some(chosen.by),
                        ..template.clone()
                    });
                }
                tracing::info!(image = %template.image, rules = %list.rules, requests, listed = list.listed, selected = ?list.selected, "tags selected");
            }
            Err(failure) => {
                tracing::error!(image = %template.image, rules = %list.rules, error = %failure, "cannot list the tags");
                list.error = Some(failure.to_string());
                failed.push((
                    template.index,
                    crate::output::report::ImageResult {
                        image: template.image.clone(),
                        tag: String::new(),
                        action: crate::output::report::Action::Failed,
                        remote_digest: None,
                        cached_digest: None,
                        duration_ms: 0,
                        error: Some(format!("listing tags: {failure}")),
                        tool: Some(crate::registry::Tool::Builtin),
                        attempts: 1,
                        check_gets: 0,
                        tag_moved: None,
                        upstream_digest: None,
                        skipped_check: None,
                        selected_by: Some(format!("rules: {}", list.rules)),
                        referrers: None,
                        failure: Some(Box::new(failure)),
                        filtered_digest: None,
                        platforms: None,
                    },
                ));
            }
        }
        lists.push(list);
    }
    plan.selections = selections;
    // Config order; within an entry, the selection's order (the sort is stable).
    plan.jobs.sort_by_key(|job| job.index);
    (lists, failed)
}

/// The results of the synced jobs (in `plan.jobs` order) with the failed listings put in
/// at their entries' config positions.
pub fn merge_in_config_order(
    plan: &crate::input::plan::Plan,
    synced: Vec<crate::output::report::ImageResult>,
    failed: Vec<(usize, crate::output::report::ImageResult)>,
) -> Vec<crate::output::report::ImageResult> {
    // Usually nothing to put in and the jobs already in config order: no second list of
    // results (nor the sort's scratch space) at the run's peak of memory.
    if failed.is_empty() && plan.jobs.is_sorted_by_key(|job| job.index) {
        return synced;
    }
    let mut all: Vec<(usize, crate::output::report::ImageResult)> = plan
        .jobs
        .iter()
        .map(|job| job.index)
        .zip(synced)
        .chain(failed)
        .collect();
    all.sort_by_key(|(index, _)| *index);
    all.into_iter().map(|(_, result)| result).collect()
}

/// The tag rules of the plan, for `--check` (the tags themselves are listed at run time).
pub fn describe(plan: &crate::input::plan::Plan) -> String {
    let mut text = format!(
        "tag rules: {} entr{} (tags are listed upstream at run time, {} per page; --dry-run prints the tags they select)",
        plan.selections.len(),
        if plan.selections.len() == 1 {
            "y"
        } else {
            "ies"
        },
        plan.settings.tag_page_size
    );
    for selection in &plan.selections {
        let job = &selection.template;
        text.push_str(&format!(
            "\n  [{}] {} -> {}: {}",
            job.index,
            job.source,
            job.target,
            selection.rules.describe()
        ));
    }
    text
}
