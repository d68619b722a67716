//! The images found, normalised, deduplicated and sorted, each with every place it was
//! found; references that do not parse are kept apart with theirs, never dropped.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::discover::workload::{FoundIn, Sighting};
use crate::input::reference::{ImageRef, Tag, shorten};

/// One normalised image.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The reference, normalised.
    pub image: ImageRef,
    /// The tags written next to its digest (`NAME:TAG@DIGEST`), for `--format config`.
    pub tags: BTreeSet<Tag>,
    /// Where it was found, sorted and unique once [`Inventory::finish`] ran. A `Vec`, not
    /// a set: a B-tree node holds room for 11 places, which for 80,000 images found once
    /// each was most of the memory.
    pub found_in: Vec<FoundIn>,
}

/// A reference that does not parse, with why and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    /// The reference as written (escaped and cut for display).
    pub image: String,
    /// Why it is invalid.
    pub error: String,
    /// Where it was found (sorted and unique once [`Inventory::finish`] ran).
    pub found_in: Vec<FoundIn>,
}

/// Every image found.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    entries: BTreeMap<String, Entry>,
    invalid: BTreeMap<String, Invalid>,
}

impl Inventory {
    /// An inventory of these sightings.
    pub fn from_sightings(sightings: impl IntoIterator<Item = Sighting>) -> Self {
        let mut inventory = Self::default();
        for sighting in sightings {
            inventory.add(sighting);
        }
        inventory.finish();
        inventory
    }

    /// Sorts every `found_in` and drops repeated places; call once everything is added.
    pub fn finish(&mut self) {
        for entry in self.entries.values_mut() {
            entry.found_in.sort_unstable();
            entry.found_in.dedup();
        }
        for invalid in self.invalid.values_mut() {
            invalid.found_in.sort_unstable();
            invalid.found_in.dedup();
        }
    }

    /// Adds one sighting.
    pub fn add(&mut self, sighting: Sighting) {
        let Sighting { image, found_in } = sighting;
        let parsed = match &image {
            Some(raw) => ImageRef::parse(raw).map_err(|err| (shorten(raw), err.to_string())),
            None => Err(("(not a string)".to_owned(), "is not a string".to_owned())),
        };
        match parsed {
            Ok(reference) => {
                let key = reference.to_string();
                let tag = reference.digest().and(reference.written_tag().cloned());
                let entry = self.entries.entry(key).or_insert_with(|| Entry {
                    image: reference,
                    tags: BTreeSet::new(),
                    found_in: Vec::new(),
                });
                entry.tags.extend(tag);
                entry.found_in.push(found_in);
            }
            Err((shown, error)) => {
                self.invalid
                    .entry(shown.clone())
                    .or_insert_with(|| Invalid {
                        image: shown,
                        error,
                        found_in: Vec::new(),
                    })
                    .found_in
                    .push(found_in);
            }
        }
    }

    /// The images, sorted by their normalised text.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// How many distinct images.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no image was found.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The references that did not parse, sorted.
    pub fn invalid(&self) -> impl Iterator<Item = &Invalid> {
        self.invalid.values()
    }
}

/// Adds sightings; [`Inventory::finish`] then sorts and deduplicates the places.
impl Extend<Sighting> for Inventory {
    fn extend<I: IntoIterator<Item = Sighting>>(&mut self, sightings: I) {
        for sighting in sightings {
            self.add(sighting);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sighting(image: &str, name: &str) -> Sighting {
        Sighting {
            image: Some(image.to_owned()),
            found_in: FoundIn {
                kind: "Pod".to_owned(),
                namespace: None,
                name: name.to_owned(),
                container: "c".to_owned(),
                file: None,
            },
        }
    }

    #[test]
    fn spellings_of_one_image_merge_and_sort() {
        let hex = "c".repeat(64);
        let inventory = Inventory::from_sightings([
            sighting("nginx", "b"),
            sighting("docker.io/library/nginx:latest", "a"),
            sighting("nginx", "b"),
            sighting(&format!("app:1@sha256:{hex}"), "x"),
            sighting(&format!("docker.io/library/app@sha256:{hex}"), "y"),
            sighting("{{ .Values.image }}", "z"),
        ]);
        let images: Vec<String> = inventory.entries().map(|e| e.image.to_string()).collect();
        assert_eq!(
            images,
            [
                format!("docker.io/library/app@sha256:{hex}"),
                "docker.io/library/nginx:latest".to_owned()
            ]
        );
        let nginx = inventory.entries().nth(1).expect("two");
        let names: Vec<&str> = nginx.found_in.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let app = inventory.entries().next().expect("one");
        assert_eq!(app.tags.iter().map(Tag::as_str).collect::<Vec<_>>(), ["1"]);
        let invalid: Vec<&Invalid> = inventory.invalid().collect();
        assert_eq!(invalid.len(), 1);
        assert_eq!(invalid[0].image, "{{ .Values.image }}");
    }
}
