//! Tag selection (`images[].tags`): rules instead of hand-kept tag lists.
//!
//! The rules are checked when the config is read ([`resolve`]); at run time the upstream's
//! tags are listed (`crate::run::tag_listing`: one paginated `tags/list` per entry, through
//! the built-in client) and [`select`] picks the tags, each of which becomes its own job and
//! its own result.
//!
//! - `semver`: a range in the `semver` crate's syntax (Cargo's): comma-separated
//!   comparators, each `=`, `>`, `>=`, `<`, `<=`, `~`, `^` or none (`^`) followed by a
//!   version that may be partial (`1.27`) or use `*`/`x` wildcards. A tag is a version when,
//!   without one leading `v`, it is a full SemVer 2.0 version (`1.27.3`, `1.28.0-rc.1`);
//!   `1.27` or `1.27-alpine` are not. Pre-releases match only when a comparator names a
//!   pre-release of the same `MAJOR.MINOR.PATCH` (the crate's rule).
//! - `regex` / `exclude`: regular expressions anchored at both ends.
//! - `latest: N`: of the tags the rules above kept, the N highest: by version with
//!   `semver`, otherwise by the `regex`'s capture groups (digit runs compared as numbers),
//!   otherwise by the whole tag in the same natural order.
//! - `include`: literal tags always kept, listed or not.

use std::cmp::Ordering;
use std::collections::HashSet;

use regex::Regex;
use semver::{Version, VersionReq};

use crate::input::config::RawTags;
use crate::input::pins::anchored;
use crate::input::reference::{Tag, shorten};

/// The tag of a selection's job template until the rules pick real ones.
pub const PLACEHOLDER: &str = "tag-rules";

/// Checks an entry's `tags` against its other fields and validates the rules, reporting
/// each problem as (field, message); `None` when there are no rules (or they are wrong).
pub fn check_entry(
    image: &crate::input::config::RawImage,
    problem: &mut impl FnMut(&str, String),
) -> Option<Rules> {
    let raw = image.tags.as_ref()?;
    let mut ok = true;
    if !image.tag.is_empty() {
        problem("tags", "give either `tag` or `tags`, not both".to_owned());
        ok = false;
    }
    if image.digest.is_some() {
        problem(
            "digest",
            "pins one tag; it cannot go with `tags` (pin each tag as its own entry)".to_owned(),
        );
        ok = false;
    }
    match resolve(raw) {
        Ok(rules) => ok.then_some(rules),
        Err(problems) => {
            for (field, message) in problems {
                problem(&field, message);
            }
            None
        }
    }
}

/// Default tags per `tags/list` page (`settings.tag_page_size`).
pub const DEFAULT_PAGE_SIZE: u64 = 100;
/// Upper bound on `settings.tag_page_size`.
pub const MAX_PAGE_SIZE: u64 = 10_000;

/// Upper bound on `latest`.
pub const MAX_LATEST: u64 = 1000;

/// The validated rules of one `tags:` entry.
#[derive(Debug, Clone)]
pub struct Rules {
    semver: Option<VersionReq>,
    regex: Option<Regex>,
    exclude: Option<Regex>,
    latest: Option<usize>,
    include: Vec<Tag>,
    /// The rules as written, for `--check` and the report's `selected_by`.
    description: String,
}

impl Rules {
    /// The rules as one line (`semver ">=1.27, <1.29", latest 3`).
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Whether the upstream's tags must be listed (only `include` needs no listing).
    pub fn needs_listing(&self) -> bool {
        self.semver.is_some() || self.regex.is_some()
    }
}

/// One selected tag and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// The tag.
    pub tag: Tag,
    /// `include`, or the rules that matched it.
    pub by: String,
}

/// Checks a `tags:` entry; every problem as (field under `tags`, message).
pub fn resolve(raw: &RawTags) -> Result<Rules, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let semver = raw.semver.as_deref().and_then(|range| {
        VersionReq::parse(range)
            .map_err(|err| {
                problems.push((
                    "tags.semver".to_owned(),
                    format!(
                        "`{}` is not a version range ({err}); write comparators like \">=1.27, <1.29\"",
                        shorten(range)
                    ),
                ))
            })
            .ok()
    });
    let mut pattern = |field: &str, value: Option<&str>| {
        value.and_then(|value| {
            anchored(value)
                .map_err(|message| problems.push((format!("tags.{field}"), message)))
                .ok()
        })
    };
    let regex = pattern("regex", raw.regex.as_deref());
    let exclude = pattern("exclude", raw.exclude.as_deref());
    let latest = match raw.latest {
        Some(n) if !(1..=MAX_LATEST).contains(&n) => {
            problems.push((
                "tags.latest".to_owned(),
                format!("is {n}; it must be between 1 and {MAX_LATEST}"),
            ));
            None
        }
        Some(n) => usize::try_from(n).ok(),
        None => None,
    };
    let mut include = Vec::new();
    for (i, tag) in raw.include.iter().enumerate() {
        match Tag::parse(tag) {
            Ok(tag) => include.push(tag),
            Err(err) => problems.push((
                format!("tags.include[{i}]"),
                format!("`{}` {err}", shorten(tag)),
            )),
        }
    }
    if raw.semver.is_none() && raw.regex.is_none() && raw.include.is_empty() {
        problems.push((
            "tags".to_owned(),
            "selects nothing; give `semver`, `regex` or `include`".to_owned(),
        ));
    }
    if raw.semver.is_none() && raw.regex.is_none() && (raw.exclude.is_some() || latest.is_some()) {
        problems.push((
            "tags".to_owned(),
            "`exclude` and `latest` filter listed tags: add `semver` or `regex` (`.*` for all)"
                .to_owned(),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut parts = Vec::new();
    if let Some(range) = &raw.semver {
        parts.push(format!("semver \"{range}\""));
    }
    if let Some(regex) = &raw.regex {
        parts.push(format!("regex \"{regex}\""));
    }
    if let Some(exclude) = &raw.exclude {
        parts.push(format!("exclude \"{exclude}\""));
    }
    if let Some(n) = latest {
        parts.push(format!("latest {n}"));
    }
    if !include.is_empty() {
        let names: Vec<&str> = include.iter().map(Tag::as_str).collect();
        parts.push(format!("include [{}]", names.join(", ")));
    }
    Ok(Rules {
        semver,
        regex,
        exclude,
        latest,
        include,
        description: parts.join(", "),
    })
}

/// A tag as a SemVer version (one leading `v` allowed).
pub fn version_of(tag: &str) -> Option<Version> {
    Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// Whether `rules` would select `tag` if the upstream listed it (`latest: N` aside: that
/// depends on the other tags listed). Used to tell whether a discovered image is covered.
pub fn matches(rules: &Rules, tag: &Tag) -> bool {
    select(rules, &[tag.as_str().to_owned()])
        .iter()
        .any(|selected| &selected.tag == tag)
}

/// The tags `rules` select from `listed` (the upstream's tags), highest first, then the
/// `include`s not already selected. Listed names that are not valid tags are ignored.
///
/// O(n log n) in the listed tags: one pass that filters and keys each tag (duplicates
/// found by a hash set), one sort of the keys (each tag's key is computed once, its
/// digit runs split once), then `latest` and the `include`s (a hash set again).
pub fn select(rules: &Rules, listed: &[String]) -> Vec<Selected> {
    let by_rules = format!("rules: {}", rules.description);
    let mut kept: Vec<(Tag, Key)> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    if rules.needs_listing() {
        for name in listed {
            let Ok(tag) = Tag::parse(name) else { continue };
            let version = version_of(name);
            if let Some(range) = &rules.semver {
                match &version {
                    Some(version) if range.matches(version) => {}
                    _ => continue,
                }
            }
            let captures = match &rules.regex {
                Some(regex) => match regex.captures(name) {
                    Some(captures) => captures
                        .iter()
                        .skip(1)
                        .map(|group| group.map_or("", |m| m.as_str()).to_owned())
                        .collect(),
                    None => continue,
                },
                None => Vec::new(),
            };
            if rules
                .exclude
                .as_ref()
                .is_some_and(|exclude| exclude.is_match(name))
            {
                continue;
            }
            if !seen.insert(name.as_str()) {
                continue;
            }
            let key = match (&rules.semver, version) {
                (Some(_), Some(version)) => Key::Version(version),
                _ if !captures.is_empty() => {
                    Key::Natural(captures.iter().map(|c| runs(c)).collect())
                }
                _ => Key::Natural(vec![runs(name)]),
            };
            kept.push((tag, key));
        }
    }
    // Highest first; equal keys (`v1.2.3` and `1.2.3`) by name, so the order is stable.
    let highest_first =
        |(a_tag, a): &(Tag, Key), (b_tag, b): &(Tag, Key)| b.cmp(a).then_with(|| a_tag.cmp(b_tag));
    match rules.latest {
        // Only the N highest are kept: partition them out, then sort those N.
        Some(n) if n < kept.len() => {
            kept.select_nth_unstable_by(n, highest_first);
            kept.truncate(n);
            kept.sort_by(highest_first);
        }
        _ => kept.sort_by(highest_first),
    }
    let mut selected: Vec<Selected> = kept
        .into_iter()
        .map(|(tag, _)| Selected {
            tag,
            by: by_rules.clone(),
        })
        .collect();
    let mut chosen: HashSet<Tag> = selected.iter().map(|s| s.tag.clone()).collect();
    for tag in &rules.include {
        if chosen.insert(tag.clone()) {
            selected.push(Selected {
                tag: tag.clone(),
                by: "include".to_owned(),
            });
        }
    }
    selected
}

/// How selected tags are ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Version(Version),
    /// Parts compared in natural order (digit runs as numbers), each split into its runs.
    Natural(Vec<Vec<Run>>),
}

/// A run of a tag part: digits (compared as a number) or the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    digits: bool,
    text: String,
}

impl Run {
    /// The digits without leading zeros.
    fn number(&self) -> &str {
        self.text.trim_start_matches('0')
    }
}

/// `v1.10-rc2` -> `v`, `1`, `.`, `10`, `-rc`, `2`.
fn runs(text: &str) -> Vec<Run> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for i in 1..=bytes.len() {
        if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
            out.push(Run {
                digits: bytes[start].is_ascii_digit(),
                text: text[start..i].to_owned(),
            });
            start = i;
        }
    }
    out
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Version(a), Self::Version(b)) => a.cmp(b),
            (Self::Natural(a), Self::Natural(b)) => a
                .iter()
                .zip(b)
                .map(|(a, b)| natural(a, b))
                .find(|order| order.is_ne())
                .unwrap_or_else(|| a.len().cmp(&b.len())),
            (Self::Version(_), Self::Natural(_)) => Ordering::Greater,
            (Self::Natural(_), Self::Version(_)) => Ordering::Less,
        }
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Natural order: runs of digits compare as numbers, the rest as text.
fn natural(a: &[Run], b: &[Run]) -> Ordering {
    #[cfg(test)]
    COMPARISONS.with(|count| count.set(count.get() + 1));
    for (a, b) in a.iter().zip(b) {
        let order = if a.digits && b.digits {
            let (a, b) = (a.number(), b.number());
            a.len().cmp(&b.len()).then_with(|| a.cmp(b))
        } else {
            a.text.cmp(&b.text)
        };
        if order.is_ne() {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

#[cfg(test)]
thread_local! {
    /// Natural-order comparisons made on this thread, for the complexity test.
    static COMPARISONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Result<Rules, Vec<(String, String)>> {
        resolve(&serde_yaml_ng::from_str::<RawTags>(yaml).expect("yaml"))
    }

    fn picked(yaml: &str, listed: &[&str]) -> Vec<String> {
        let listed: Vec<String> = listed.iter().map(|s| (*s).to_owned()).collect();
        select(&rules(yaml).expect("valid"), &listed)
            .into_iter()
            .map(|s| s.tag.to_string())
            .collect()
    }

    /// Issue 18 item 6: selecting from 100,000 listed tags (each listed twice) makes
    /// O(n log n) comparisons, not n^2 (24-30 s before); the time is in
    /// `cargo bench --bench tag_selection`.
    #[test]
    fn selection_from_100000_tags_makes_n_log_n_comparisons() {
        let n: u64 = 100_000;
        let mut listed: Vec<String> = (0..n)
            .map(|i| format!("build-{}-{}", (i * 7_919) % n, i % 13))
            .collect();
        listed.extend(listed.clone());
        let bound = 3 * n * u64::from(n.ilog2() + 1);
        for (yaml, expected) in [
            ("regex: 'build-(\\d+)-(\\d+)'\n", n as usize),
            ("regex: 'build-(\\d+)-(\\d+)'\nlatest: 1000\n", 1_000),
        ] {
            COMPARISONS.with(|count| count.set(0));
            let picked = select(&rules(yaml).expect("valid"), &listed);
            let made = COMPARISONS.with(std::cell::Cell::get);
            assert_eq!(picked.len(), expected, "{yaml}");
            assert!(
                made <= bound,
                "{made} comparisons for {n} tags ({yaml}): over {bound}"
            );
            assert!(
                picked[0].tag.as_str().starts_with("build-99999"),
                "{:?}",
                picked[0]
            );
        }
        let versions: Vec<String> = (0..n)
            .map(|i| format!("{}.{}.{}", i / 10_000, (i / 100) % 100, i % 100))
            .collect();
        let picked = select(
            &rules("semver: '>=1.0.0'\nlatest: 3\n").expect("valid"),
            &versions,
        );
        let names: Vec<&str> = picked.iter().map(|s| s.tag.as_str()).collect();
        assert_eq!(names, ["9.99.99", "9.99.98", "9.99.97"]);
    }

    const LISTED: &[&str] = &[
        "1.26.9",
        "1.27.0",
        "1.27.3",
        "v1.28.1",
        "1.28.0-rc.1",
        "1.29.0",
        "1.27",
        "latest",
        "1.27.3-alpine",
        "1.28.2-alpine",
        "1.9.1-alpine",
        "1.10.0-alpine",
        "--bad",
    ];

    #[test]
    fn a_semver_range_selects_versions_and_skips_pre_releases() {
        assert_eq!(
            picked("semver: \">=1.27, <1.29\"", LISTED),
            ["v1.28.1", "1.27.3", "1.27.0"]
        );
        // A comparator naming a pre-release admits that version's pre-releases.
        assert_eq!(
            picked("semver: \">=1.28.0-rc.1, <1.29\"", LISTED),
            ["v1.28.1", "1.28.0-rc.1"]
        );
        assert_eq!(picked("semver: \"~1.27\"\nlatest: 1", LISTED), ["1.27.3"]);
    }

    #[test]
    fn regex_exclude_latest_and_include() {
        // By the regex's captures, numerically: 1.28 > 1.27 > 1.10 > 1.9.
        assert_eq!(
            picked(
                "regex: '(\\d+)\\.(\\d+)\\.\\d+-alpine'\nlatest: 3\ninclude: [latest]",
                LISTED
            ),
            ["1.28.2-alpine", "1.27.3-alpine", "1.10.0-alpine", "latest"]
        );
        assert_eq!(
            picked("regex: '.*-alpine'\nexclude: '1\\.(9|10)\\..*'", LISTED),
            ["1.28.2-alpine", "1.27.3-alpine"]
        );
        // Anchored: `1\.27` does not match `1.27.3`.
        assert_eq!(picked("regex: '1\\.27'", LISTED), ["1.27"]);
        assert_eq!(picked("include: [\"7.4\", latest]", &[]), ["7.4", "latest"]);
        let rules = rules("semver: \"^1\"\nlatest: 2\ninclude: [edge]").expect("valid");
        assert_eq!(rules.describe(), "semver \"^1\", latest 2, include [edge]");
        let selected = select(&rules, &["1.0.0".to_owned(), "edge".to_owned()]);
        assert_eq!(
            selected[0].by,
            "rules: semver \"^1\", latest 2, include [edge]"
        );
        assert_eq!(selected[1].by, "include");
    }

    #[test]
    fn bad_rules_are_reported_together() {
        let problems = rules("semver: \">=1.x.y.z\"\nregex: 'a('\nlatest: 0\ninclude: ['-x']")
            .expect_err("invalid");
        let fields: Vec<&str> = problems.iter().map(|(field, _)| field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "tags.semver",
                "tags.regex",
                "tags.latest",
                "tags.include[0]"
            ]
        );
        assert!(
            rules("{}").expect_err("empty")[0]
                .1
                .contains("selects nothing")
        );
        assert!(
            rules("include: [a]\nlatest: 2").expect_err("latest alone")[0]
                .1
                .contains("add `semver` or `regex`")
        );
    }

    #[test]
    fn natural_order_compares_numbers_as_numbers() {
        assert_eq!(natural(&runs("1.10"), &runs("1.9")), Ordering::Greater);
        assert_eq!(natural(&runs("a2"), &runs("a10")), Ordering::Less);
        assert_eq!(natural(&runs("007"), &runs("7")), Ordering::Equal);
        assert_eq!(natural(&runs("1.2"), &runs("1.2.1")), Ordering::Less);
    }
}
