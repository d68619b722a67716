//! The prune decision, a pure function: from what the config lists, what image-sync
//! recorded writing, what the cache holds now and how the cache deletes, which tags go and
//! why every other recorded tag stays.
//!
//! The rules, each a reason to keep a tag (checked in this order):
//! 1. the config lists it (or its repository has tag rules, whose tags are chosen at run
//!    time);
//! 2. image-sync never wrote it, or the tag now holds a digest image-sync did not write
//!    there (someone else pushed it);
//! 3. the cache deletes nothing (deletes disabled);
//! 4. the cache deletes by digest only (Distribution 2.8), which removes every tag on that
//!    digest and the manifest other indexes list: the digest is also held by a tag that
//!    stays, or listed as a child by an index a tag that stays holds.
//!
//! Above `max_deletions` deletions, nothing is deleted.

use std::collections::{BTreeMap, BTreeSet};

/// A repository path in the cache (without the host).
pub type Repo = String;

/// How the cache deletes a tag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Deletes {
    /// `DELETE /manifests/<tag>` removes that tag only (OCI 1.1, Zot).
    ByTag,
    /// Only `DELETE /manifests/<digest>` works, removing every tag on it (Distribution 2.8).
    ByDigest,
    /// Deletes are disabled (also the answer until asked: deletes nothing).
    #[default]
    Disabled,
}

/// What the cache holds in one repository now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    /// Every tag and its digest.
    pub tags: BTreeMap<String, String>,
    /// For the digests that are indexes: the digests they list.
    pub children: BTreeMap<String, BTreeSet<String>>,
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `(repository, tag)` the config lists.
    pub listed: BTreeSet<(Repo, String)>,
    /// Repositories whose tags the config chooses by tag rules: every tag there stays.
    pub ruled: BTreeSet<Repo>,
    /// What image-sync recorded writing: `(repository, tag)` and the digests it wrote.
    pub written: BTreeMap<(Repo, String), BTreeSet<String>>,
    /// The cache now, for every repository with a record.
    pub cache: BTreeMap<Repo, Contents>,
    /// How the cache deletes.
    pub deletes: Deletes,
}

/// How one deletion is sent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// `DELETE /manifests/<tag>`.
    Tag(String),
    /// `DELETE /manifests/<digest>`: every tag listed goes with it.
    Digest {
        /// The digest.
        digest: String,
        /// The tags it removes.
        tags: Vec<String>,
    },
}

/// One deletion.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deletion {
    /// The repository.
    pub repository: Repo,
    /// What is sent.
    pub target: Target,
}

impl Deletion {
    /// The tags it removes.
    pub fn tags(&self) -> Vec<&str> {
        match &self.target {
            Target::Tag(tag) => vec![tag.as_str()],
            Target::Digest { tags, .. } => tags.iter().map(String::as_str).collect(),
        }
    }
}

/// The decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// What to delete.
    pub delete: Vec<Deletion>,
    /// Recorded tags that stay, and why.
    pub kept: Vec<((Repo, String), String)>,
}

impl Decision {
    /// The tags the deletions remove.
    pub fn deleted_tags(&self) -> usize {
        self.delete
            .iter()
            .map(|deletion| deletion.tags().len())
            .sum()
    }
}

/// Decides what prune deletes.
pub fn decide(inputs: &Inputs) -> Decision {
    let mut decision = Decision::default();
    // Recorded tags that may go, by repository: tag -> digest.
    let mut candidates: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for ((repo, tag), digests) in &inputs.written {
        let key = (repo.clone(), tag.clone());
        let keep = |why: String| (key.clone(), why);
        if inputs.listed.contains(&key) {
            decision.kept.push(keep("listed in the config".to_owned()));
            continue;
        }
        if inputs.ruled.contains(repo) {
            decision.kept.push(keep(
                "its repository has tag rules in the config (tags chosen at run time)".to_owned(),
            ));
            continue;
        }
        let Some(now) = inputs.cache.get(repo).and_then(|c| c.tags.get(tag)) else {
            // Gone already: nothing to delete, nothing to keep.
            continue;
        };
        if !digests.contains(now) {
            decision.kept.push(keep(format!(
                "the tag holds {now}, which image-sync did not write there (someone else pushed it)"
            )));
            continue;
        }
        match inputs.deletes {
            Deletes::Disabled => {
                decision.kept.push(keep(
                    "the cache has deletes disabled (Distribution: storage.delete.enabled)"
                        .to_owned(),
                ));
            }
            Deletes::ByTag => decision.delete.push(Deletion {
                repository: repo.clone(),
                target: Target::Tag(tag.clone()),
            }),
            Deletes::ByDigest => {
                candidates
                    .entry(repo.as_str())
                    .or_default()
                    .insert(tag.as_str(), now.as_str());
            }
        }
    }
    for (repo, going) in candidates {
        let contents = &inputs.cache[repo];
        let staying: Vec<(&str, &str)> = contents
            .tags
            .iter()
            .filter(|(tag, _)| !going.contains_key(tag.as_str()))
            .map(|(tag, digest)| (tag.as_str(), digest.as_str()))
            .collect();
        let mut going_digests: Vec<Deletion> = Vec::new();
        let mut by_digest: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (tag, digest) in &going {
            by_digest.entry(digest).or_default().push((*tag).to_owned());
        }
        for (digest, tags) in by_digest {
            let shared = staying.iter().find(|(_, held)| *held == digest);
            let listed_by = staying.iter().find(|(_, held)| {
                contents
                    .children
                    .get(*held)
                    .is_some_and(|children| children.contains(digest))
            });
            let why = match (shared, listed_by) {
                (Some((other, _)), _) => Some(format!(
                    "the cache deletes by digest only, and {digest} is also tagged `{other}`, which stays"
                )),
                (None, Some((other, held))) => Some(format!(
                    "the cache deletes by digest only, and {digest} is listed by the index {held} that `{other}` holds, which stays"
                )),
                (None, None) => None,
            };
            match why {
                Some(why) => {
                    for tag in tags {
                        decision.kept.push(((repo.to_owned(), tag), why.clone()));
                    }
                }
                None => going_digests.push(Deletion {
                    repository: repo.to_owned(),
                    target: Target::Digest {
                        digest: digest.to_owned(),
                        tags,
                    },
                }),
            }
        }
        decision
            .delete
            .extend(parents_first(going_digests, &contents.children));
    }
    decision.kept.sort();
    decision
}

/// Orders one repository's digest deletions so that an index goes before the children it
/// lists: a failure in between never leaves a tag on an index whose child is gone.
fn parents_first(
    mut left: Vec<Deletion>,
    children: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<Deletion> {
    let digest = |deletion: &Deletion| match &deletion.target {
        Target::Digest { digest, .. } => digest.clone(),
        Target::Tag(tag) => tag.clone(),
    };
    let mut ordered = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let digests: Vec<String> = left.iter().map(digest).collect();
        let listed_by_another = |wanted: &String| {
            digests.iter().any(|parent| {
                parent != wanted
                    && children
                        .get(parent)
                        .is_some_and(|listed| listed.contains(wanted))
            })
        };
        let (ready, rest): (Vec<Deletion>, Vec<Deletion>) = left
            .into_iter()
            .partition(|deletion| !listed_by_another(&digest(deletion)));
        if ready.is_empty() {
            // A cycle, which content addressing rules out: keep the order as it is.
            ordered.extend(rest);
            break;
        }
        ordered.extend(ready);
        left = rest;
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn inputs(deletes: Deletes) -> Inputs {
        let mut inputs = Inputs {
            deletes,
            ..Inputs::default()
        };
        let contents = Contents {
            tags: [
                ("listed", d('a')),
                ("old", d('b')),
                ("twin", d('b')),
                ("shared", d('c')),
                ("theirs", d('c')),
                ("moved", d('e')),
                ("child", d('f')),
                ("index", d('9')),
            ]
            .into_iter()
            .map(|(t, d)| (t.to_owned(), d))
            .collect(),
            children: [(d('9'), [d('f')].into_iter().collect())]
                .into_iter()
                .collect(),
        };
        inputs.cache.insert("app".into(), contents);
        for (tag, digest) in [
            ("listed", 'a'),
            ("old", 'b'),
            ("twin", 'b'),
            ("shared", 'c'),
            ("moved", 'd'),
            ("child", 'f'),
            ("gone", '1'),
        ] {
            inputs.written.insert(
                ("app".into(), tag.into()),
                [d(digest)].into_iter().collect(),
            );
        }
        inputs.listed.insert(("app".into(), "listed".into()));
        inputs.listed.insert(("app".into(), "index".into()));
        inputs
    }

    #[test]
    fn by_digest_only_what_no_staying_tag_holds_or_lists() {
        let decision = decide(&inputs(Deletes::ByDigest));
        assert_eq!(
            decision.delete,
            [Deletion {
                repository: "app".into(),
                target: Target::Digest {
                    digest: d('b'),
                    tags: vec!["old".into(), "twin".into()]
                }
            }]
        );
        let why = |tag: &str| {
            decision
                .kept
                .iter()
                .find(|((_, t), _)| t == tag)
                .map(|(_, why)| why.clone())
                .unwrap_or_default()
        };
        assert_eq!(why("listed"), "listed in the config");
        assert!(why("shared").contains("also tagged `theirs`"));
        assert!(why("moved").contains("did not write"));
        assert!(why("child").contains("listed by the index"));
        assert_eq!(why("gone"), "");
    }

    #[test]
    fn by_tag_each_tag_alone_and_disabled_deletes_nothing() {
        let decision = decide(&inputs(Deletes::ByTag));
        let tags: Vec<&str> = decision.delete.iter().flat_map(Deletion::tags).collect();
        assert_eq!(tags, ["child", "old", "shared", "twin"]);
        let decision = decide(&inputs(Deletes::Disabled));
        assert!(decision.delete.is_empty());
    }
}
