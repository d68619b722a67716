//! The raw config: a serde mirror of the YAML file, read strictly.
//!
//! Nothing here is trusted yet: [`crate::plan`] turns a [`RawConfig`] into a validated
//! plan. This module only reads the file and reports where the YAML itself is wrong
//! (syntax, unknown keys, wrong types) with the file, line and column.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The largest config file image-sync reads. A ConfigMap holds at most 1 MiB; anything much
/// larger is a mistake (or hostile), and reading it would only waste memory.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// The config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImage {
    /// Repository without tag or digest (`docker.io/library/nginx`, `nginx`).
    pub source: String,
    /// The tag to keep cached (empty when `tags` selects them).
    #[serde(default)]
    pub tag: String,
    /// Repository path in the cache, replacing the default (the source path).
    #[serde(default)]
    pub cache_as: Option<String>,
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
}

/// `images[].tags`: which of the upstream's tags to keep cached (see `crate::tags`).
#[derive(Debug, Default, Deserialize)]
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
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Anchored regular expressions: a matching tag the cache has is not checked upstream.
    #[serde(default)]
    pub immutable_tags: Vec<String>,
    /// Tags per `tags/list` page (`n`) when tag rules list them (default 100).
    pub tag_page_size: Option<u64>,
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

/// A config file that could not be read or parsed.
#[derive(Debug)]
pub struct LoadError {
    /// The file.
    pub path: PathBuf,
    /// One line saying what is wrong, with the line and column when YAML gave them.
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for LoadError {}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<RawConfig, LoadError> {
    let fail = |message: String| LoadError {
        path: path.to_owned(),
        message,
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
    parse(&bytes).map_err(fail)
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
    serde_yaml_ng::from_str::<RawConfig>(text).map_err(|err| describe_yaml_error(&err, text))
}

/// serde_yaml_ng's message, made to name the image when the error sits inside one.
fn describe_yaml_error(err: &serde_yaml_ng::Error, text: &str) -> String {
    let message = shorten_keeping_location(&err.to_string().replace('\n', " "));
    let Some(rest) = message.strip_prefix("images[") else {
        return message;
    };
    let Some(index) = rest.split(']').next().and_then(|i| i.parse::<usize>().ok()) else {
        return message;
    };
    match image_source_at(text, index) {
        Some(source) => format!(
            "images[{index}] (source `{source}`){}",
            &rest[rest.find(']').map_or(0, |i| i + 1)..]
        ),
        None => message,
    }
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
