//! Properties of the prune decision (`image_sync::run::prune::decide`), for random
//! configs, records and cache contents, under each way a cache deletes: no listed tag, no
//! tag image-sync did not write (or that someone else pushed over), and, where the cache
//! deletes by digest only, no digest that a staying tag holds or that an index a staying
//! tag holds lists, is ever deleted, and an index goes before the children it lists. Fixed seed in CI (`PROPTEST_RNG_SEED`), failures
//! persisted (see `crate::hostile_input::persisted`).

use std::collections::{BTreeMap, BTreeSet};

use image_sync::run::prune::decide::{Contents, Deletes, Inputs, Target, decide};
use proptest::prelude::*;

use crate::hostile_input::persisted;

const REPOS: &[&str] = &["app", "lib/a", "team/b"];
const TAGS: &[&str] = &["1", "2", "3", "latest", "old", "x"];

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

/// One repository's random state: per tag, the digest the cache holds (or none), whether
/// image-sync wrote it (and which digest), whether the config lists it; and which digests
/// are indexes listing which others.
fn inputs() -> impl Strategy<Value = Inputs> {
    let tag_state = (
        proptest::option::of(0_u8..6),
        proptest::option::of(0_u8..6),
        any::<bool>(),
    );
    let repo_state = (
        proptest::collection::vec(tag_state, TAGS.len()),
        proptest::collection::vec((0_u8..6, 0_u8..6), 0..4),
        any::<bool>(),
    );
    (
        proptest::collection::vec(repo_state, REPOS.len()),
        prop_oneof![
            Just(Deletes::ByTag),
            Just(Deletes::ByDigest),
            Just(Deletes::Disabled)
        ],
    )
        .prop_map(|(repos, deletes)| {
            let mut inputs = Inputs {
                deletes,
                ..Inputs::default()
            };
            for (repo, (tags, links, ruled)) in REPOS.iter().zip(repos) {
                let mut contents = Contents::default();
                for (tag, (held, written, listed)) in TAGS.iter().zip(tags) {
                    let key = ((*repo).to_owned(), (*tag).to_owned());
                    if let Some(held) = held {
                        contents.tags.insert((*tag).to_owned(), digest(held));
                    }
                    if let Some(written) = written {
                        inputs
                            .written
                            .entry(key.clone())
                            .or_default()
                            .insert(digest(written));
                    }
                    if listed {
                        inputs.listed.insert(key);
                    }
                }
                // An index lists only digests other than its own and never one that lists
                // it back (content addressing): links go from a higher digest to a lower.
                for (a, b) in links {
                    let (index, child) = (a.max(b), a.min(b));
                    if index == child {
                        continue;
                    }
                    contents
                        .children
                        .entry(digest(index))
                        .or_default()
                        .insert(digest(child));
                }
                if ruled {
                    inputs.ruled.insert((*repo).to_owned());
                }
                inputs.cache.insert((*repo).to_owned(), contents);
            }
            inputs
        })
}

proptest! {
    #![proptest_config(persisted(512))]

    #[test]
    fn prune_never_deletes_a_listed_foreign_or_shared_tag(inputs in inputs()) {
        let decision = decide(&inputs);
        let mut deleted: BTreeSet<(String, String)> = BTreeSet::new();
        for deletion in &decision.delete {
            let contents = &inputs.cache[&deletion.repository];
            // What the deletion really removes from the cache.
            let removed: Vec<String> = match &deletion.target {
                Target::Tag(tag) => {
                    prop_assert_eq!(inputs.deletes, Deletes::ByTag);
                    vec![tag.clone()]
                }
                Target::Digest { digest, tags } => {
                    prop_assert_eq!(inputs.deletes, Deletes::ByDigest);
                    let holding: Vec<String> = contents
                        .tags
                        .iter()
                        .filter(|(_, held)| *held == digest)
                        .map(|(tag, _)| tag.clone())
                        .collect();
                    // Deleting a digest removes every tag on it: all of them were meant to go.
                    prop_assert_eq!(&holding, tags);
                    holding
                }
            };
            for tag in removed {
                deleted.insert((deletion.repository.clone(), tag));
            }
        }
        prop_assert!(inputs.deletes != Deletes::Disabled || deleted.is_empty());
        // By digest: no staying tag holds an index listing a deleted digest, and an index
        // is deleted before the children it lists (a failure in between never leaves a tag
        // on an index whose child is gone).
        for (position, deletion) in decision.delete.iter().enumerate() {
            let Target::Digest { digest, .. } = &deletion.target else {
                continue;
            };
            let contents = &inputs.cache[&deletion.repository];
            for (tag, held) in &contents.tags {
                let lists = contents
                    .children
                    .get(held)
                    .is_some_and(|children| children.contains(digest));
                if !lists || held == digest {
                    continue;
                }
                let staying = !deleted.contains(&(deletion.repository.clone(), tag.clone()));
                prop_assert!(!staying, "{digest} is listed by {held} held by staying tag {tag}");
                let parent = decision.delete.iter().position(|other| {
                    other.repository == deletion.repository
                        && matches!(&other.target, Target::Digest { digest, .. } if digest == held)
                });
                prop_assert!(
                    parent.is_some_and(|parent| parent < position),
                    "the index {held} is deleted after its child {digest}"
                );
            }
        }
        for key in &deleted {
            prop_assert!(!inputs.listed.contains(key), "listed tag deleted: {key:?}");
            prop_assert!(!inputs.ruled.contains(&key.0), "tag-rules repository touched: {key:?}");
            let held = &inputs.cache[&key.0].tags[&key.1];
            let written: &BTreeSet<String> = inputs
                .written
                .get(key)
                .ok_or_else(|| TestCaseError::fail(format!("foreign tag deleted: {key:?}")))?;
            prop_assert!(written.contains(held), "a tag someone else pushed over was deleted: {key:?}");
        }
        // Every recorded tag that is in the cache and not deleted has a reason to stay.
        let kept: BTreeMap<_, _> = decision.kept.iter().cloned().collect();
        for key in inputs.written.keys() {
            let present = inputs.cache.get(&key.0).is_some_and(|c| c.tags.contains_key(&key.1));
            if present && !deleted.contains(key) {
                prop_assert!(kept.contains_key(key), "{key:?} neither deleted nor kept with a reason");
            }
        }
        prop_assert_eq!(decision.deleted_tags(), deleted.len());
    }
}
