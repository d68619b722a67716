//! Reading the JSON that `image-sync discover --format json` prints: one entry per image,
//! each with the workloads it was `found_in`.

use serde_json::Value;

use super::runner::Outcome;

/// The entries of a run's JSON array.
pub fn entries(run: &Outcome) -> Vec<Value> {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|err| panic!("not a JSON array ({err}): {}", run.stdout))
}

/// The `image` of every entry, in order.
pub fn images(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["image"].as_str().expect("image"))
        .collect()
}

/// The entry of `image`; panics listing the entries when there is none.
pub fn entry<'a>(entries: &'a [Value], image: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["image"] == image)
        .unwrap_or_else(|| panic!("{image} missing from {entries:#?}"))
}
