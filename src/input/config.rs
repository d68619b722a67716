//! The raw config: a serde mirror of the YAML file, read strictly.
//!
//! Nothing here is trusted yet: [`crate::input::plan`] turns a [`RawConfig`] into a validated
//! plan. This module only reads the file and reports where the YAML itself is wrong
//! (syntax, unknown keys, wrong types) with the file, line and column.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::input::reference::shorten;

/// The largest config file image-sync reads. A ConfigMap holds at most 1 MiB; anything much
/// larger is a mistake (or hostile), and reading it would only waste memory.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// The config file as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `cache_registry`, `images` and optionally `settings` at the top level"
)]
pub struct RawConfig {
    /// `host[:port]` of the cache registry, optionally followed by a path prefix.
    pub cache_registry: String,
    /// The images to keep cached, in report order.
    pub images: Vec<RawImage>,
    /// Tuning; every field has a default.
    #[serde(default)]
    pub settings: RawSettings,
}

/// One entry of `images`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Image")]
#[serde(
    deny_unknown_fields,
    expecting = "an image: a mapping with `source`, `tag` and optionally `cache_as`"
)]
pub struct RawImage {
    /// Repository without tag or digest (`docker.io/library/nginx`, `nginx`).
    pub source: String,
    /// The tag to keep cached (empty when `tags` selects them).
    #[serde(default)]
    pub tag: String,
    /// Repository path in the cache, replacing the default (the source path).
    #[serde(default)]
    pub cache_as: Option<String>,
    /// Also keep this image's signatures, attestations and SBOMs cached (default:
    /// `settings.referrers`).
    #[serde(default)]
    pub referrers: Option<bool>,
    /// A digest pin (`sha256:...`): the cache's tag must point at exactly this digest.
    #[serde(default)]
    pub digest: Option<String>,
    /// For a pinned image: one free HEAD of the upstream tag per run, to report when it
    /// moves away from the pin (default true).
    #[serde(default)]
    pub watch_tag: Option<bool>,
    /// Tag rules instead of `tag`: the upstream's tags are listed and selected.
    #[serde(default)]
    pub tags: Option<RawTags>,
    /// The platforms of a multi-arch image to cache (`os/arch[/variant]`), replacing
    /// `settings.platforms`; `[all]` keeps every platform.
    #[serde(default)]
    pub platforms: Option<Vec<String>>,
}

/// `images[].tags`: which of the upstream's tags to keep cached (see `crate::input::tag_rules`).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "TagRules")]
#[serde(deny_unknown_fields)]
pub struct RawTags {
    /// A version range (`">=1.27, <1.29"`).
    pub semver: Option<String>,
    /// An anchored regular expression a tag must match.
    pub regex: Option<String>,
    /// An anchored regular expression a tag must not match.
    pub exclude: Option<String>,
    /// Keep only the N highest of the matching tags.
    pub latest: Option<u64>,
    /// Literal tags always kept.
    #[serde(default)]
    pub include: Vec<String>,
}

/// `settings`, all optional.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Settings")]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of settings such as `concurrency: 2` (see docs/src/configuration.md)"
)]
pub struct RawSettings {
    /// Copies at once (default 2).
    pub concurrency: Option<u64>,
    /// Digest checks at once (default 8).
    pub check_concurrency: Option<u64>,
    /// Retries of a transient failure per step (default 2).
    pub retries: Option<u64>,
    /// Past this many seconds from the start, no new image starts (default: none).
    pub run_deadline_secs: Option<u64>,
    /// Bound on each copy, in seconds (default 300).
    pub pull_timeout_secs: Option<u64>,
    /// Bound on each digest check, in seconds (default 30, at most `pull_timeout_secs`).
    pub check_timeout_secs: Option<u64>,
    /// Exit 0 even when images failed (default false).
    pub skip_on_error: Option<bool>,
    /// Registries spoken to over plain HTTP or without certificate checks (`host:port`).
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Who reads digests: `builtin` (default) or `crane`.
    pub digest_check: Option<crate::registry::DigestCheck>,
    /// Pulls kept in reserve per metered registry: a count, or a percentage of the
    /// reported limit (`"10%"`, the default); `0` turns it off.
    pub quota_reserve: Option<RawReserve>,
    /// A Pushgateway to push the run's metrics to (`http://host:9091`).
    pub pushgateway: Option<String>,
    /// Keep every image's signatures, attestations and SBOMs cached (default false).
    pub referrers: Option<bool>,
    /// A referrer that fails to sync fails its image (default false: reported only).
    pub referrers_required: Option<bool>,
    /// Anchored regular expressions: a matching tag the cache has is not checked upstream.
    #[serde(default)]
    pub immutable_tags: Vec<String>,
    /// Tags per `tags/list` page (`n`) when tag rules list them (default 100).
    pub tag_page_size: Option<u64>,
    /// At most this many OCI referrers are synced per image (default 100); more are left
    /// out with a warning.
    pub referrers_per_image: Option<u64>,
    /// The platforms of multi-arch images to cache (`os/arch[/variant]`, default `[all]`):
    /// the cache gets an index holding only these platforms' manifests.
    pub platforms: Option<Vec<String>>,
    /// Run `image-sync prune` after a successful, complete, unsharded run (default false).
    pub prune: Option<bool>,
    /// `cluster`: each run also lists the cluster's workloads (read-only) and reports the
    /// images no entry covers (default `off`; needs the coverage RBAC).
    pub coverage: Option<CoverageMode>,
}

/// `settings.coverage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CoverageMode {
    /// No coverage check (the default).
    Off,
    /// List the cluster's workloads through the in-cluster service account (or KUBECONFIG).
    Cluster,
}

/// `settings.quota_reserve` as written: a whole number or a string like `"10%"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawReserve {
    /// A count of pulls.
    Pulls(u64),
    /// Text to resolve (`"10%"`, or a number in quotes).
    Text(String),
}

impl<'de> serde::Deserialize<'de> for RawReserve {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawReserve;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of pulls or a percentage like \"10%\"")
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<RawReserve, E> {
                Ok(RawReserve::Pulls(value))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<RawReserve, E> {
                u64::try_from(value)
                    .map(RawReserve::Pulls)
                    .map_err(|_| E::custom("a reserve cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<RawReserve, E> {
                Ok(RawReserve::Text(value.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// By hand, as the type reads itself by hand: a whole number, or text holding a number or a
/// percentage.
impl schemars::JsonSchema for RawReserve {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "QuotaReserve".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Pulls kept in reserve per metered registry: a count (`7`), or a percentage of the reported limit (`\"10%\"`, the default); `0` turns it off.",
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+\\s*%?\\s*$" }
            ]
        })
    }
}

/// A config file that could not be read or parsed.
#[derive(Debug)]
pub struct LoadError {
    /// The file.
    pub path: PathBuf,
    /// One line saying what is wrong, with the line and column when YAML gave them.
    pub message: String,
    /// Where in the file the config sits, when it is not the whole file (a ConfigMap key).
    pub within: Option<String>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.within {
            Some(within) => write!(f, "{} ({within}): {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<RawConfig, LoadError> {
    let fail = |message: String| LoadError {
        path: path.to_owned(),
        message,
        within: None,
    };
    let metadata = std::fs::metadata(path).map_err(|err| fail(read_error_hint(&err)))?;
    if !metadata.is_file() {
        return Err(fail("is not a regular file".to_owned()));
    }
    if metadata.len() > MAX_CONFIG_BYTES {
        return Err(fail(format!(
            "is {} bytes; a config is at most {MAX_CONFIG_BYTES} bytes",
            metadata.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|err| fail(read_error_hint(&err)))?;
    match std::str::from_utf8(&bytes).ok().and_then(embedded_config) {
        Some(embedded) => {
            let text = embedded.map_err(&fail)?;
            parse(text.config.as_bytes()).map_err(|message| LoadError {
                within: Some(format!("ConfigMap `{}`, key `{CONFIGMAP_KEY}`", text.name)),
                ..fail(text.to_file_lines(&message))
            })
        }
        None => parse(&bytes).map_err(fail),
    }
}

/// The key of a ConfigMap's `data` that holds image-sync's config (the CronJob mounts it
/// as `/etc/image-sync/config.yaml`).
pub const CONFIGMAP_KEY: &str = "config.yaml";

/// A config read out of a Kubernetes ConfigMap manifest, so that
/// `image-sync --check --config configmap.yaml` checks what the cluster will mount.
#[derive(Debug)]
struct EmbeddedConfig {
    /// `metadata.name`, for messages.
    name: String,
    /// The value of `data."config.yaml"`.
    config: String,
    /// Where the value's first line sits in the file (0-based line) and by how many
    /// columns it is indented there, when it is a block scalar whose lines are verbatim
    /// in the file: then error locations can be moved to the file's lines.
    offset: Option<(usize, usize)>,
}

impl EmbeddedConfig {
    /// Rewrites every `line N column M` in a message from the embedded config's numbering
    /// to the file's; without a known offset, says how lines are counted instead.
    fn to_file_lines(&self, message: &str) -> String {
        let Some((first_line, indent)) = self.offset else {
            return format!("{message} (lines counted from the start of `config.yaml`)");
        };
        let mut out = String::new();
        let mut rest = message;
        while let Some(at) = rest.find("line ") {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            let parsed = (|| {
                let after = rest.strip_prefix("line ")?;
                let line_len = after.find(|c: char| !c.is_ascii_digit())?;
                let line: usize = after[..line_len].parse().ok()?;
                let after = after[line_len..].strip_prefix(" column ")?;
                let column_len = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                let column: usize = after[..column_len].parse().ok()?;
                let consumed = "line ".len() + line_len + " column ".len() + column_len;
                Some((line, column, consumed))
            })();
            match parsed {
                Some((line, column, consumed)) => {
                    out.push_str(&format!(
                        "line {} column {}",
                        line + first_line,
                        column + indent
                    ));
                    rest = &rest[consumed..];
                }
                None => {
                    out.push_str("line ");
                    rest = &rest["line ".len()..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// The ConfigMap manifest's parts image-sync reads (everything else is Kubernetes').
#[derive(Deserialize)]
struct ConfigMapManifest {
    kind: String,
    #[serde(default)]
    metadata: Option<ConfigMapMetadata>,
    #[serde(default)]
    data: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct ConfigMapMetadata {
    #[serde(default)]
    name: Option<String>,
}

/// `Some` when the file is a Kubernetes ConfigMap manifest (a top-level `kind: ConfigMap`
/// line, then parsed as one): its `config.yaml`, or why it has none.
fn embedded_config(text: &str) -> Option<Result<EmbeddedConfig, String>> {
    // Cheap first: an image-sync config never has a top-level `kind`.
    let is_configmap = text.lines().any(|line| {
        line.strip_prefix("kind:")
            .is_some_and(|kind| kind.trim().trim_matches(['"', '\'']) == "ConfigMap")
    });
    if !is_configmap || nesting_beyond(text, MAX_NESTING).is_some() {
        return None;
    }
    let manifest: ConfigMapManifest = match serde_yaml_ng::from_str(text) {
        Ok(manifest) => manifest,
        Err(err) => {
            return Some(Err(format!(
                "looks like a ConfigMap but is not valid YAML: {}",
                describe_syntax_error(&err, text)
            )));
        }
    };
    if manifest.kind != "ConfigMap" {
        return None;
    }
    let name = manifest
        .metadata
        .and_then(|m| m.name)
        .map_or_else(|| "(no name)".to_owned(), |n| shorten(&n));
    let mut data = manifest.data.unwrap_or_default();
    let Some(config) = data.remove(CONFIGMAP_KEY) else {
        let keys: Vec<String> = data.keys().map(|k| format!("`{}`", shorten(k))).collect();
        return Some(Err(format!(
            "is the ConfigMap `{name}`, whose `data` has no `{CONFIGMAP_KEY}` key (it has {}); image-sync reads its config from `data.\"{CONFIGMAP_KEY}\"`",
            if keys.is_empty() {
                "none".to_owned()
            } else {
                keys.join(", ")
            }
        )));
    };
    let offset = block_offset(text, &config);
    Some(Ok(EmbeddedConfig {
        name,
        config,
        offset,
    }))
}

/// Where a block scalar holding `value` starts in `text` (0-based line of its first line,
/// and its indentation), when each of its lines is verbatim there.
fn block_offset(text: &str, value: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let key_line = lines.iter().position(|line| {
        let trimmed = line.trim_start();
        [CONFIGMAP_KEY, "\"config.yaml\"", "'config.yaml'"]
            .iter()
            .any(|key| {
                trimmed
                    .strip_prefix(key)
                    .and_then(|rest| rest.trim_start().strip_prefix(':'))
                    .is_some_and(|rest| rest.trim_start().starts_with('|'))
            })
    })?;
    let first = key_line + 1;
    let body = &lines[first..];
    let indent = body
        .iter()
        .find(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start_matches(' ').len())?;
    let verbatim = value.lines().enumerate().all(|(i, line)| {
        body.get(i).is_some_and(|file_line| {
            (line.is_empty() && file_line.trim().is_empty())
                || file_line.get(indent..) == Some(line)
        })
    });
    verbatim.then_some((first, indent))
}

/// Parses config bytes; the error is one line with the YAML location when known.
pub fn parse(bytes: &[u8]) -> Result<RawConfig, String> {
    let text = std::str::from_utf8(bytes).map_err(|err| {
        format!(
            "is not valid UTF-8 (first bad byte at offset {})",
            err.valid_up_to()
        )
    })?;
    if text.trim().is_empty() {
        return Err("is empty; it needs `cache_registry` and `images`".to_owned());
    }
    if let Some(depth) = nesting_beyond(text, MAX_NESTING) {
        return Err(format!(
            "nests `[`/`{{` deeper than {MAX_NESTING} levels (at byte {depth}); a config needs a handful"
        ));
    }
    serde_yaml_ng::from_str::<RawConfig>(text).map_err(|err| {
        // serde_yaml_ng keeps the events read before a syntax error and deserializes those
        // first, so a mis-indented `tag` showed up as "missing field `tag`" at the start of
        // its image, lines before the real mistake. Any error a walk over the whole document
        // finds (syntax, aliases) comes first: it is the cause.
        match serde_yaml_ng::from_str::<serde::de::IgnoredAny>(text) {
            Err(syntax) => describe_syntax_error(&syntax, text),
            Ok(_) => describe_yaml_error(&err, text),
        }
    })
}

/// serde_yaml_ng's message, made to name the image when the error sits inside one, and to
/// say what to do about a tag written into `source`.
fn describe_yaml_error(err: &serde_yaml_ng::Error, text: &str) -> String {
    let message = shorten_keeping_location(&err.to_string().replace('\n', " "));
    let Some(rest) = message.strip_prefix("images[") else {
        return message;
    };
    let Some(index) = rest.split(']').next().and_then(|i| i.parse::<usize>().ok()) else {
        return message;
    };
    let Some(source) = image_source_at(text, index) else {
        return message;
    };
    format!(
        "images[{index}] (source `{}`){}",
        shorten(&source),
        &rest[rest.find(']').map_or(0, |i| i + 1)..]
    )
}

/// A YAML syntax error, with the tab named when a tab is what broke it, and a word on
/// indentation when the structure did not line up.
fn describe_syntax_error(err: &serde_yaml_ng::Error, text: &str) -> String {
    let message = shorten_keeping_location(&err.to_string().replace('\n', " "));
    let location = err.location().map(|l| (l.line(), l.column()));
    if let Some((line, column)) = location.and_then(|(l, c)| tab_near(text, l, c)) {
        return format!(
            "a tab character at line {line} column {column}; YAML indents with spaces: replace the tab with spaces (the parser said: {message})"
        );
    }
    let misaligned = [
        "did not find expected",
        "expected <block end>",
        "mapping values are not allowed",
    ];
    if misaligned.iter().any(|m| message.contains(m)) {
        return format!(
            "{message}; check the indentation there: the keys of one mapping start in the same column (an image's `tag` right under its `source`)"
        );
    }
    message
}

/// Where a tab sits that breaks the YAML at `line`/`column` (1-based): at that position or
/// in that line's indentation. Tabs inside values are fine and not reported.
fn tab_near(text: &str, line: usize, column: usize) -> Option<(usize, usize)> {
    let content = text.lines().nth(line.checked_sub(1)?)?;
    if content.chars().nth(column.checked_sub(1)?) == Some('\t') {
        return Some((line, column));
    }
    let indentation = content.len() - content.trim_start_matches([' ', '\t']).len();
    content[..indentation]
        .find('\t')
        .map(|offset| (line, offset + 1))
}

/// Deeper flow nesting than this is refused before parsing: the YAML parser's time grows
/// with the square of the depth, and no config needs more than a few levels.
const MAX_NESTING: usize = 64;

/// The byte offset where unquoted `[`/`{` nesting first exceeds `limit`, if it does.
fn nesting_beyond(text: &str, limit: usize) -> Option<usize> {
    let (mut depth, mut quote) = (0_usize, None::<u8>);
    let mut comment = false;
    for (offset, byte) in text.bytes().enumerate() {
        match (quote, byte) {
            (_, b'\n') => comment = false,
            _ if comment => {}
            (Some(open), b) if b == open => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(byte),
            (None, b'#') => comment = true,
            (None, b'[' | b'{') => {
                depth += 1;
                if depth > limit {
                    return Some(offset);
                }
            }
            (None, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// serde quotes offending values; a hostile 100 kB value must not be echoed whole. Keeps
/// the head of the message and its `at line N column M` tail.
fn shorten_keeping_location(message: &str) -> String {
    const HEAD: usize = 240;
    if message.chars().count() <= 2 * HEAD {
        return message.to_owned();
    }
    let tail = message.rfind(" at line ").map_or("", |at| &message[at..]);
    let head: String = message.chars().take(HEAD).collect();
    format!("{head}...{tail}")
}

/// The `source` of image `index`, read leniently so that it can name the image in an error.
/// Skipped when the file has anchors: re-reading aliases into a value tree can expand a
/// small hostile file into gigabytes (serde_yaml_ng limits alias jumps, not fan-out).
fn image_source_at(text: &str, index: usize) -> Option<String> {
    if text.contains('&') {
        return None;
    }
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    let source = value.get("images")?.get(index)?.get("source")?.as_str()?;
    Some(source.chars().take(80).collect())
}

fn read_error_hint(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => {
            "cannot read: file not found (pass --config PATH or set IMAGE_SYNC_CONFIG)".to_owned()
        }
        std::io::ErrorKind::PermissionDenied => "cannot read: permission denied".to_owned(),
        _ => format!("cannot read: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(yaml: &str) -> String {
        match parse(yaml.as_bytes()) {
            Ok(config) => panic!("expected an error, parsed {config:?}"),
            Err(message) => message,
        }
    }

    #[test]
    fn the_seed_example_parses() {
        let config = parse(
            br#"
cache_registry: "image-cache.image-cache.svc.cluster.local:5000"
images:
  - source: "docker.io/library/nginx"
    tag: "1.27-alpine"
  - source: "ghcr.io/project-zot/zot-linux-amd64"
    tag: "v2.1.2"
    cache_as: "project-zot/zot-linux-amd64"
settings:
  concurrency: 2
  pull_timeout_secs: 300
  skip_on_error: false
"#,
        )
        .expect("valid");
        assert_eq!(config.images.len(), 2);
        assert_eq!(
            config.images[1].cache_as.as_deref(),
            Some("project-zot/zot-linux-amd64")
        );
        assert_eq!(config.settings.concurrency, Some(2));
    }

    #[test]
    fn unknown_keys_name_the_image_and_location() {
        let message = error_of(
            "cache_registry: c:5000\nimages:\n  - source: nginx\n    tag: x\n  - source: redis\n    tag: y\n    cache_ass: z\n",
        );
        assert!(
            message.starts_with("images[1] (source `redis`)"),
            "{message}"
        );
        assert!(message.contains("unknown field `cache_ass`"), "{message}");
        assert!(message.contains("line 7 column 5"), "{message}");
    }

    #[test]
    fn structural_errors_keep_line_and_column() {
        assert!(error_of("cache_registry: [\n").contains("line"));
        assert!(error_of("images: []\n").contains("missing field `cache_registry`"));
        let wrong_type = error_of("cache_registry: c\nimages: []\nsettings:\n  concurrency: two\n");
        assert!(
            wrong_type.contains("settings.concurrency") && wrong_type.contains("line 4"),
            "{wrong_type}"
        );
        assert!(error_of("   \n").contains("is empty"));
        assert!(
            error_of("cache_registry: c\nimages: []\nsettings:\n  concurrency: -1\n")
                .contains("concurrency")
        );
    }

    #[test]
    fn a_mis_indented_key_is_reported_at_its_own_line() {
        // `tag` one space short: the real error is on line 6, not "missing field `tag`" at
        // the start of the image on line 5.
        let message = error_of(
            "cache_registry: c:5000\nimages:\n  - source: nginx\n    tag: \"1\"\n  - source: redis\n   tag: \"7\"\n",
        );
        assert!(message.contains("at line 6 column 4"), "{message}");
        assert!(!message.contains("missing field"), "{message}");
        assert!(message.contains("check the indentation"), "{message}");
    }

    #[test]
    fn a_tab_is_named_with_its_line_and_column() {
        for (yaml, at) in [
            ("\tcache_registry: c\nimages: []\n", "line 1 column 1"),
            (
                "cache_registry: c\nimages:\n\t- {source: a, tag: b}\n",
                "line 3 column 1",
            ),
            (
                "cache_registry: c\nimages:\n  - source: a\n  \ttag: b\n",
                "line 4 column 3",
            ),
        ] {
            let message = error_of(yaml);
            assert!(
                message.starts_with(&format!(
                    "a tab character at {at}; YAML indents with spaces"
                )),
                "{message}"
            );
        }
        // A tab inside a value is no error.
        assert!(parse(b"cache_registry: c\nimages:\n  - source: a\n    tag:\tb\n").is_ok());
    }

    #[test]
    fn wrong_shapes_are_described_without_internal_type_names() {
        for yaml in [
            "just a string\n",
            "- a\n",
            "cache_registry: c\nimages: [nginx]\n",
            "cache_registry: c\nimages: [{source: a, tag: b}]\nsettings: 3\n",
        ] {
            let message = error_of(yaml);
            assert!(!message.contains("Raw"), "{message}");
            assert!(!message.contains("struct"), "{message}");
        }
        assert!(
            error_of("just a string\n")
                .contains("expected a mapping with `cache_registry`, `images` and optionally `settings` at the top level")
        );
        assert!(
            error_of("cache_registry: c\nimages: [nginx]\n")
                .contains("expected an image: a mapping with `source`, `tag`")
        );
    }

    const CONFIGMAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sync\ndata:\n  config.yaml: |\n    cache_registry: c:5000\n    images:\n      - source: nginx\n        tag: \"1\"\n";

    #[test]
    fn a_configmap_holds_the_config_under_config_yaml() {
        let embedded = embedded_config(CONFIGMAP)
            .expect("a ConfigMap")
            .expect("with config.yaml");
        assert_eq!(embedded.name, "sync");
        assert_eq!(embedded.offset, Some((6, 4)));
        let config = parse(embedded.config.as_bytes()).expect("valid");
        assert_eq!(config.images[0].source, "nginx");
        assert!(embedded_config("cache_registry: c\nimages: []\n").is_none());
        assert!(embedded_config("kind: Deployment\n").is_none());
        let without = embedded_config(&CONFIGMAP.replace("config.yaml", "other.yaml"))
            .expect("a ConfigMap")
            .expect_err("no config.yaml");
        assert!(
            without.contains("`data` has no `config.yaml` key (it has `other.yaml`)"),
            "{without}"
        );
    }

    #[test]
    fn errors_inside_a_configmap_point_at_the_files_lines() {
        let broken = CONFIGMAP.replace("        tag:", "       tag:");
        let embedded = embedded_config(&broken)
            .expect("a ConfigMap")
            .expect("with config.yaml");
        let message = embedded.to_file_lines(&error_of(&embedded.config));
        // The mis-indented `tag` is line 10, column 8 of the file (line 4, column 4 inside).
        assert!(message.contains("at line 10 column 8"), "{message}");
        // A value that is not a verbatim block says how lines are counted instead.
        let flow = EmbeddedConfig {
            name: "x".to_owned(),
            config: String::new(),
            offset: None,
        };
        assert_eq!(
            flow.to_file_lines("bad at line 2 column 3"),
            "bad at line 2 column 3 (lines counted from the start of `config.yaml`)"
        );
    }

    #[test]
    fn long_values_are_not_echoed_whole() {
        let long = "x".repeat(100_000);
        let message = error_of(&format!(
            "cache_registry: c\nimages: []\nsettings:\n  concurrency: \"{long}\"\n"
        ));
        assert!(message.len() < 600, "{} bytes", message.len());
        assert!(message.contains("line 4"), "{message}");
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("cache_registry: {}\n", "[".repeat(100));
        assert!(error_of(&deep).contains("deeper than 64 levels"));
        assert_eq!(
            nesting_beyond("a: \"[[[[\"\n# {{{{\nb: [1, [2]]\n", 2),
            None
        );
        assert_eq!(nesting_beyond("b: [[[1]]]", 2), Some(5));
    }

    #[test]
    fn non_utf8_is_a_clear_error() {
        assert!(
            parse(b"cache_registry: \xff\n")
                .expect_err("must fail")
                .contains("not valid UTF-8")
        );
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut bomb =
            String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
        for level in 0..9 {
            let prev = if level == 0 {
                "a".to_owned()
            } else {
                format!("l{}", level - 1)
            };
            bomb.push_str(&format!("l{level}: &l{level} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        let message = error_of(&bomb);
        assert!(!message.is_empty());
    }
}
