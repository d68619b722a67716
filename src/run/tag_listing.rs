//! Tag listing at run time: each `images[].tags` entry's upstream tags are listed (one
//! paginated `tags/list` through the built-in client), the rules of
//! [`crate::input::tag_rules`] select from them, and every selected tag becomes a job of
//! its own. The listing's cost and outcome are recorded for the report (`tag_lists`).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::input::reference::{Repository, Tag};
use crate::input::tag_rules::select;
use crate::output::report::TagList;
use crate::registry::{Class, Failure, Toolbox};
use crate::run::breaker::Breakers;

/// What the run's listings share with its image checks.
#[derive(Clone)]
pub struct Limits {
    /// The run deadline (its clock started with the run, before the listings).
    pub deadline: Option<Instant>,
    /// The run's breakers by host.
    pub breakers: Arc<Breakers>,
}

/// Why a listing did not run or did not finish.
#[derive(Clone)]
enum NotListed {
    /// Interrupted, a tripped breaker, a failed listing: the entry fails.
    Failed(Failure),
    /// The run deadline passed before it started: the entry is deferred.
    Deferred,
}

/// One entry's listing: the tags (or why not) and the requests it cost.
type Listing = (Result<Vec<String>, NotListed>, u32);

/// Lists the tags of every entry that needs it, `check_concurrency` at a time and in
/// config order (as image checks), none started past the deadline, after a signal, or
/// towards a registry whose breaker tripped. Entries with the same source share one
/// listing (the others cost no request). Returns each entry's listing by position in
/// `selections`; `None` for an entry without listing rules.
async fn list_all(
    plan: &crate::input::plan::Plan,
    selections: &[crate::input::plan::Selection],
    toolbox: &Arc<Toolbox>,
    cancel: &crate::process::Cancel,
    limits: &Limits,
) -> Vec<Option<Listing>> {
    let mut out: Vec<Option<Listing>> = (0..selections.len()).map(|_| None).collect();
    // The first entry of each source lists; the others copy its outcome.
    let mut first_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut shared: Vec<(usize, usize)> = Vec::new();
    let permits = Arc::new(Semaphore::new(plan.settings.check_concurrency));
    let mut tasks = JoinSet::new();
    let mut watch = cancel.clone();
    let stopped = |source: &crate::input::reference::Repository| {
        NotListed::Failed(Failure::new(
            Class::Interrupted,
            format!("before the tags of {source} were listed"),
        ))
    };
    for (position, selection) in selections.iter().enumerate() {
        if !selection.rules.needs_listing() {
            continue;
        }
        let source = selection.template.source.clone();
        match first_of.entry(source.to_string()) {
            std::collections::hash_map::Entry::Occupied(first) => {
                shared.push((position, *first.get()));
                continue;
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(position);
            }
        }
        // The permit is taken before spawning, so that listings start in config order.
        let permit = tokio::select! {
            biased;
            _ = watch.wait_for(|cancelled| *cancelled) => None,
            permit = Arc::clone(&permits).acquire_owned() => permit.ok(),
        };
        let Some(permit) = permit.filter(|_| !*watch.borrow()) else {
            out[position] = Some((Err(stopped(&source)), 0));
            continue;
        };
        if limits
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            out[position] = Some((Err(NotListed::Deferred), 0));
            continue;
        }
        if let Some(skipped) = limits.breakers.check(&[source.host()]) {
            out[position] = Some((Err(NotListed::Failed(skipped)), 0));
            continue;
        }
        let (toolbox, limits) = (Arc::clone(toolbox), limits.clone());
        let mut cancelled = cancel.clone();
        let (page, timeout) = (plan.settings.tag_page_size, plan.settings.check_timeout);
        tasks.spawn(async move {
            let _permit = permit;
            tokio::select! {
                listed = toolbox.list_tags(&source, page, timeout) => {
                    let tags = listed.tags.map_err(|failure| {
                        if failure.class.trips_breaker() && limits.breakers.trip(&failure).is_some() {
                            tracing::error!(registry = %source.host(), cause = %failure, "registry refuses requests: no more requests go to it in this run");
                        }
                        NotListed::Failed(failure)
                    });
                    (position, tags, listed.requests)
                }
                _ = cancelled.wait_for(|cancelled| *cancelled) => (position, Err(stopped(&source)), 0),
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok((position, tags, requests)) = joined {
            out[position] = Some((tags, requests));
        }
    }
    for (position, first) in shared {
        out[position] = out[first].as_ref().map(|(tags, _)| (tags.clone(), 0));
    }
    out
}

/// Lists and selects the tags of every `tags:` entry, adding one job per selected tag to
/// `plan.jobs` (config order kept; a tag another entry already syncs to the same cache
/// image is left to that entry). Returns what each listing cost and, for a listing that
/// failed, a failed result with the entry's config index.
pub async fn expand(
    plan: &mut crate::input::plan::Plan,
    toolbox: &Arc<Toolbox>,
    cancel: &crate::process::Cancel,
    limits: &Limits,
) -> (
    Vec<TagList>,
    Vec<(usize, crate::output::report::ImageResult)>,
) {
    let mut lists = Vec::new();
    let mut failed = Vec::new();
    let selections = std::mem::take(&mut plan.selections);
    // Shared texts, not copies: 100,000 selected tags make 100,000 keys.
    let mut taken: std::collections::HashSet<(Repository, Tag)> = plan
        .jobs
        .iter()
        .map(|job| (job.target.clone(), job.tag.clone()))
        .collect();
    let mut listings = list_all(plan, &selections, toolbox, cancel, limits).await;
    for (position, selection) in selections.iter().enumerate() {
        let template = &selection.template;
        let (listed, requests) = listings[position].take().unwrap_or_else(|| {
            if selection.rules.needs_listing() {
                let failure = Failure::new(
                    Class::Other,
                    format!(
                        "internal error: the listing of {} did not finish",
                        template.source
                    ),
                );
                (Err(NotListed::Failed(failure)), 0)
            } else {
                (Ok(Vec::new()), 0)
            }
        });
        let mut list = TagList {
            image: template.image.to_string(),
            rules: selection.rules.describe().to_owned(),
            requests,
            listed: 0,
            selected: Vec::new(),
            error: None,
        };
        match listed {
            Ok(tags) => {
                list.listed = tags.len();
                // One text per rule, shared by the tags it selected.
                let mut rule_texts: Vec<Arc<str>> = Vec::new();
                for chosen in select(&selection.rules, &tags) {
                    let key = (template.target.clone(), chosen.tag.clone());
                    if !taken.insert(key) {
                        tracing::warn!(image = %template.image, tag = %chosen.tag, "selected by tag rules, but another entry already syncs this tag to the same cache image; left to that entry");
                        continue;
                    }
                    list.selected.push(chosen.tag.clone());
                    let by = match rule_texts.iter().find(|text| ***text == *chosen.by) {
                        Some(text) => Arc::clone(text),
                        None => {
                            let text: Arc<str> = chosen.by.into();
                            rule_texts.push(Arc::clone(&text));
                            text
                        }
                    };
                    plan.jobs.push(crate::input::plan::Job {
                        immutable: crate::input::pins::is_immutable(
                            &plan.settings.immutable_tags,
                            chosen.tag.as_str(),
                        ),
                        tag: chosen.tag,
                        selected_by: Some(by),
                        entry: Arc::clone(&template.entry),
                    });
                }
                tracing::info!(image = %template.image, rules = %list.rules, requests, listed = list.listed, selected = %TagsText(&list.selected), "tags selected");
            }
            Err(not_listed) => {
                let (action, error, failure) = match not_listed {
                    NotListed::Failed(failure) => {
                        tracing::error!(image = %template.image, rules = %list.rules, error = %failure, "cannot list the tags");
                        (
                            crate::output::report::Action::Failed,
                            format!("listing tags: {failure}"),
                            Some(failure),
                        )
                    }
                    NotListed::Deferred => {
                        tracing::warn!(image = %template.image, rules = %list.rules, action = "deferred", "run deadline reached before the tags were listed");
                        (
                            crate::output::report::Action::Deferred,
                            "deferred: run deadline reached before the tags were listed; the next run picks it up".to_owned(),
                            None,
                        )
                    }
                };
                list.error = Some(error.clone());
                failed.push((
                    template.index,
                    crate::output::report::ImageResult {
                        image: template.image.clone(),
                        tag: "".into(),
                        action,
                        digests: crate::output::report::Digests::Unknown,
                        duration_ms: 0,
                        tool: Some(crate::registry::Tool::Builtin),
                        attempts: 1,
                        check_gets: 0,

                        skipped_check: None,
                        selected_by: Some(format!("rules: {}", list.rules).into()),
                        details: crate::output::report::Details::with_error(error, failure),
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

/// Selected tags in a log line: `[a, b]`, without copying them.
struct TagsText<'a>(&'a [crate::input::reference::Tag]);

impl std::fmt::Display for TagsText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[")?;
        for (position, tag) in self.0.iter().enumerate() {
            if position > 0 {
                f.write_str(", ")?;
            }
            std::fmt::Display::fmt(tag, f)?;
        }
        f.write_str("]")
    }
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
