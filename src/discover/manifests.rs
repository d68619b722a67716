//! Reading Kubernetes manifests: files, directories (recursive `*.yaml`, `*.yml`,
//! `*.json`) and stdin (`-`), as `kustomize build` and `helm template` print them:
//! multi-document YAML, `kind: List` (and `*List`), JSON. A file that is not YAML or JSON
//! is an error naming the file and line; objects of other kinds are skipped.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::discover::workload::{self, Sighting};
use crate::input::reference::shorten;

/// The largest manifest input read (a file, or stdin): far above any real chart render,
/// small enough that a mistaken `/dev/zero` is refused rather than eating the memory.
pub const MAX_INPUT_BYTES: u64 = 1024 * 1024 * 1024;

/// Nesting bound for `kind: List` inside `kind: List`.
const MAX_LIST_DEPTH: usize = 8;

/// A manifest input that could not be read or parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file (`-` for stdin).
    pub file: String,
    /// The line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}: line {line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ManifestError {}

/// Every container image in the manifests at `paths`, in reading order (files of a
/// directory sorted by name), added to `found` as each document is read (an inventory
/// keeps only what it needs, not every sighting of a 100,000-object stream).
pub fn read(paths: &[PathBuf], found: &mut impl Extend<Sighting>) -> Result<(), ManifestError> {
    for path in paths {
        if path.as_os_str() == "-" {
            let text = read_limited(std::io::stdin().lock(), "-")?;
            parse("-", &text, found)?;
            continue;
        }
        for file in files(path)? {
            let name = file.display().to_string();
            let handle = std::fs::File::open(&file).map_err(|err| ManifestError {
                file: name.clone(),
                line: None,
                message: format!("cannot read: {err}"),
            })?;
            let text = read_limited(handle, &name)?;
            parse(&name, &text, found)?;
        }
    }
    Ok(())
}

fn read_limited(reader: impl std::io::Read, file: &str) -> Result<String, ManifestError> {
    let error = |message: String| ManifestError {
        file: file.to_owned(),
        line: None,
        message,
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| error(format!("cannot read: {err}")))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(error(format!(
            "is larger than {} MiB; split it",
            MAX_INPUT_BYTES / 1024 / 1024
        )));
    }
    String::from_utf8(bytes).map_err(|err| {
        let offset = err.utf8_error().valid_up_to();
        let line = err.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        ManifestError {
            file: file.to_owned(),
            line: Some(line),
            message: "is not UTF-8 text (not YAML or JSON)".to_owned(),
        }
    })
}

/// The manifest files under `path`: the file itself, or a directory's `*.yaml`, `*.yml` and
/// `*.json`, recursively, sorted (symbolic links to directories are not followed).
fn files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let error = |message: String| ManifestError {
        file: path.display().to_string(),
        line: None,
        message,
    };
    let metadata = std::fs::metadata(path).map_err(|err| error(format!("cannot read: {err}")))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut found = Vec::new();
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|err| ManifestError {
            file: dir.display().to_string(),
            line: None,
            message: format!("cannot list: {err}"),
        })?;
        for entry in entries.flatten() {
            let entry_path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry_path);
            } else if entry_path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                found.push(entry_path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Parses one input's text (YAML documents, or one JSON value) into sightings.
pub fn parse(
    file: &str,
    text: &str,
    found: &mut impl Extend<Sighting>,
) -> Result<(), ManifestError> {
    let trimmed = text.trim_start();
    if file.ends_with(".json") || trimmed.starts_with('{') || trimmed.starts_with('[') {
        let value: Value = serde_json::from_str(text).map_err(|err| ManifestError {
            file: file.to_owned(),
            line: Some(err.line()),
            message: format!("is not valid JSON: {err}"),
        })?;
        return visit(file, &value, Some(1), 0, found);
    }
    // One document at a time: serde_yaml_ng loads a whole stream's events before the first
    // document, which for a 100,000-object `kustomize build` is most of the memory.
    for (first_line, chunk) in documents(text) {
        for document in serde_yaml_ng::Deserializer::from_str(chunk) {
            let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(document)
                .map_err(|err| ManifestError {
                    file: file.to_owned(),
                    line: err.location().map(|l| first_line + l.line() - 1),
                    message: format!("is not valid YAML: {}", strip_location(&err.to_string())),
                })?;
            let content_line = if chunk.starts_with("---\n") || chunk == "---" {
                first_line + 1
            } else {
                first_line
            };
            visit(file, &to_json(value), Some(content_line), 0, found)?;
        }
    }
    Ok(())
}

/// serde_yaml_ng's message ends with ` at line L column C`, which the error says itself.
fn strip_location(message: &str) -> &str {
    message
        .find(" at line ")
        .map_or(message, |at| &message[..at])
}

/// The YAML stream cut before each document marker (`---` at the start of a line, which
/// YAML allows nowhere inside a document), with the line each piece starts on.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut pieces = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if offset > start && (bare == "---" || bare.starts_with("--- ")) {
            pieces.push((start_line, &text[start..offset]));
            (start, start_line) = (offset, number + 1);
        }
        offset += line.len();
    }
    if start < text.len() {
        pieces.push((start_line, &text[start..]));
    }
    pieces
}

/// Collects the sightings of one document: a workload, a list of objects, or nothing.
fn visit(
    file: &str,
    value: &Value,
    line: Option<usize>,
    depth: usize,
    found: &mut impl Extend<Sighting>,
) -> Result<(), ManifestError> {
    let object = match value {
        // `---` with nothing after it, or a comment-only document.
        Value::Null => return Ok(()),
        Value::Object(object) => object,
        _ => {
            return Err(ManifestError {
                file: file.to_owned(),
                line,
                message: "is not a Kubernetes manifest: a document is not a mapping (apiVersion, kind, ...)".to_owned(),
            });
        }
    };
    let text = |field: &str| {
        object
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    if kind.ends_with("List")
        && let Some(items) = object.get("items").and_then(Value::as_array)
    {
        if depth >= MAX_LIST_DEPTH {
            return Err(ManifestError {
                file: file.to_owned(),
                line,
                message: format!("nests lists deeper than {MAX_LIST_DEPTH}"),
            });
        }
        for item in items {
            // Items of a typed list (`PodList`) may leave out their own kind.
            let item_kind = item.get("kind").and_then(Value::as_str);
            match (item_kind, kind.strip_suffix("List")) {
                (None, Some(element)) if workload::is_workload(api_version, element) => {
                    found.extend(workload::sightings(element, item, Some(file)));
                }
                _ => visit(file, item, line, depth + 1, found)?,
            }
        }
        return Ok(());
    }
    if workload::is_workload(api_version, kind) {
        found.extend(workload::sightings(kind, value, Some(file)));
    } else if !kind.is_empty() {
        tracing::trace!(file = %shorten(file), kind = %shorten(kind), "not a workload kind");
    }
    Ok(())
}

/// YAML to JSON values: keys that are not strings (`1: x`) become their YAML text, tags are
/// dropped (their values kept).
fn to_json(value: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Yaml;
    match value {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => serde_json::to_value(&n).unwrap_or(Value::Null),
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Yaml::Mapping(mapping) => Value::Object(
            mapping
                .into_iter()
                .map(|(key, value)| {
                    let key = match key {
                        Yaml::String(s) => s,
                        other => serde_yaml_ng::to_string(&other)
                            .map(|s| s.trim_end().to_owned())
                            .unwrap_or_default(),
                    };
                    (key, to_json(value))
                })
                .collect(),
        ),
        Yaml::Tagged(tagged) => to_json(tagged.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(text: &str) -> Result<Vec<String>, ManifestError> {
        let mut found = Vec::new();
        parse("f.yaml", text, &mut found)?;
        Ok(found
            .into_iter()
            .map(|s| s.image.unwrap_or_default())
            .collect())
    }

    #[test]
    fn multi_document_yaml_lists_and_json_are_read() {
        let text = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: c, image: one}]\n---\n# only a comment\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: d}\n  spec: {template: {spec: {containers: [{name: c, image: two}]}}}\n- apiVersion: v1\n  kind: ConfigMap\n  data: {image: decoy}\n";
        assert_eq!(images(text).expect("valid"), ["one", "two"]);
        let json = r#"{"apiVersion": "v1", "kind": "PodList", "items": [{"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "three"}]}}]}"#;
        assert_eq!(images(json).expect("valid"), ["three"]);
    }

    #[test]
    fn text_that_is_not_yaml_names_the_line() {
        let err = images("apiVersion: v1\nkind: Pod\nspec: {containers: [\n").expect_err("invalid");
        assert_eq!(err.file, "f.yaml");
        assert!(err.line.is_some(), "{err}");
        let err =
            images("apiVersion: v1\nkind: Pod\n---\njust some words\n").expect_err("not a mapping");
        assert_eq!(err.line, Some(4), "{err}");
        assert!(
            err.to_string()
                .starts_with("f.yaml: line 4: is not a Kubernetes manifest")
        );
        let mut found = Vec::new();
        let err = parse("x.json", "{\n\"a\": }", &mut found).expect_err("invalid");
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn documents_are_cut_at_markers_with_their_first_line() {
        let lines = |text| -> Vec<usize> { documents(text).iter().map(|(l, _)| *l).collect() };
        assert_eq!(lines("a: 1\n---\nb: 2\n"), [1, 2]);
        assert_eq!(lines("---\na: 1\n---\nb: 2\n"), [1, 3]);
        assert_eq!(lines("# c\n---\na: 1\n"), [1, 2]);
        assert_eq!(documents("a: |\n  ---\n  x\n")[0].1, "a: |\n  ---\n  x\n");
    }
}
