//! The three outputs of `image-sync discover`: `list` (one normalised reference per line),
//! `config` (an `images:` list image-sync accepts) and `json` (each image with where it
//! was found).

use serde::Serialize;

use crate::discover::inventory::{Invalid, Inventory};
use crate::discover::workload::FoundIn;

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One normalised reference per line, sorted, unique.
    List,
    /// YAML: an `images:` list for the config (source and tag, or a digest pin).
    Config,
    /// `[{"image", "found_in": [{"kind", "namespace", "name", "container"}]}]`.
    Json,
}

/// The text written to stdout.
pub fn render(inventory: &Inventory, format: Format) -> String {
    match format {
        Format::List => inventory
            .entries()
            .map(|entry| format!("{}\n", entry.image))
            .collect(),
        Format::Config => config(inventory),
        Format::Json => json(inventory),
    }
}

fn config(inventory: &Inventory) -> String {
    let mut text = String::from(
        "# Written by `image-sync discover --format config`: add these entries to the config's\n# `images:` (next to `cache_registry:` and `settings:`).\nimages:\n",
    );
    if inventory.is_empty() {
        text = text.replace("images:\n", "images: []\n");
    }
    for entry in inventory.entries() {
        let source = entry.image.repository();
        match (entry.image.digest(), entry.image.pulled_tag()) {
            (Some(digest), _) => match entry.tags.first() {
                Some(tag) => text.push_str(&format!(
                    "  - source: {}\n    tag: {}\n    digest: {digest}\n",
                    quote(&source.to_string()),
                    quote(tag.as_str())
                )),
                None => text.push_str(&format!(
                    "  # {source}@{digest}: pulled by digest with no tag; a pin needs the tag that points at it\n"
                )),
            },
            (None, Some(tag)) => text.push_str(&format!(
                "  - source: {}\n    tag: {}\n",
                quote(&source.to_string()),
                quote(tag.as_str())
            )),
            (None, None) => {}
        }
    }
    text
}

/// A value as a YAML string, always quoted: a tag `1.27` or `true` must stay text, a host
/// `[::1]:5000` must not start a flow sequence. References hold no `"` or `\\`.
fn quote(tag: &str) -> String {
    format!("\"{tag}\"")
}

#[derive(Serialize)]
struct JsonEntry<'a> {
    image: String,
    found_in: Vec<&'a FoundIn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn json(inventory: &Inventory) -> String {
    let mut entries: Vec<JsonEntry<'_>> = inventory
        .entries()
        .map(|entry| JsonEntry {
            image: entry.image.to_string(),
            found_in: entry.found_in.iter().collect(),
            error: None,
        })
        .collect();
    entries.extend(inventory.invalid().map(|invalid: &Invalid| JsonEntry {
        image: invalid.image.clone(),
        found_in: invalid.found_in.iter().collect(),
        error: Some(&invalid.error),
    }));
    let mut text = serde_json::to_string_pretty(&entries).unwrap_or_else(|_| "[]".to_owned());
    text.push('\n');
    text
}
