//! Digest pins (`images[].digest`, `images[].watch_tag`) and immutable tags
//! (`settings.immutable_tags`): the config checks and the pure decisions; the sync path
//! (`crate::run::sync`) asks these.
//!
//! A pinned image's cache tag must point at exactly the pinned digest: when it does, no
//! upstream request is needed (one free HEAD of the tag watches whether the upstream moved
//! it, unless `watch_tag: false`); when it does not, `source@digest` is copied to the tag.
//! An immutable tag (one matching an anchored pattern) that exists in the cache is taken as
//! it is, with no upstream request at all.

use regex::{Regex, RegexBuilder};
use serde::Serialize;

use crate::input::reference::{Digest, shorten};

/// Bound on one compiled pattern: a config's pattern cannot take much memory.
const MAX_PATTERN_BYTES: usize = 1 << 20;

/// Why an image was decided without asking the upstream (`skipped_check` in the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkippedCheck {
    /// The tag matches `settings.immutable_tags` and the cache has it.
    Immutable,
    /// The image is pinned and `watch_tag: false`: the cache alone was asked.
    Pinned,
}

/// Compiles a user pattern anchored at both ends (`^(?:PATTERN)$`), with a size bound.
pub fn anchored(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(MAX_PATTERN_BYTES)
        .build()
        .map_err(|err| {
            let reason = err.to_string();
            let last = reason.lines().last().unwrap_or_default().trim().to_owned();
            format!(
                "`{}` is not a regular expression (Rust `regex` syntax): {last}",
                shorten(pattern)
            )
        })
}

/// `settings.immutable_tags`, compiled; every bad pattern is reported as
/// (`settings.immutable_tags[i]`, message).
pub fn immutable_patterns(raw: &[String]) -> (Vec<Regex>, Vec<(String, String)>) {
    let mut patterns = Vec::new();
    let mut problems = Vec::new();
    for (i, pattern) in raw.iter().enumerate() {
        match anchored(pattern) {
            Ok(regex) => patterns.push(regex),
            Err(message) => problems.push((format!("settings.immutable_tags[{i}]"), message)),
        }
    }
    (patterns, problems)
}

/// Whether `tag` matches one of the (anchored) immutable patterns.
pub fn is_immutable(patterns: &[Regex], tag: &str) -> bool {
    patterns.iter().any(|pattern| pattern.is_match(tag))
}

/// `images[].digest`: a `sha256:<64 hex>` or `sha512:<128 hex>` digest.
pub fn parse_pin(raw: &str) -> Result<Digest, String> {
    match Digest::parse(raw) {
        Some(digest) if *digest.text() == *raw => Ok(digest),
        _ => Err(format!(
            "`{}` is not a digest; write `sha256:` and 64 lowercase hex digits (the `Docker-Content-Digest` or `crane digest` of the image)",
            shorten(raw)
        )),
    }
}

/// The upstream's digest for the tag when it differs from the pin (the tag moved).
pub fn moved<'a>(pin: &Digest, upstream: Option<&'a Digest>) -> Option<&'a Digest> {
    upstream.filter(|upstream| *upstream != pin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(fill: char) -> Digest {
        Digest::parse(&format!("sha256:{}", fill.to_string().repeat(64))).expect("digest")
    }

    #[test]
    fn patterns_are_anchored_at_both_ends() {
        let (patterns, problems) =
            immutable_patterns(&[r"v\d+\.\d+\.\d+".to_owned(), "1\\.2.*-alpine".to_owned()]);
        assert!(problems.is_empty());
        assert!(is_immutable(&patterns, "v1.2.3"));
        assert!(
            !is_immutable(&patterns, "v1.2.3-rc1"),
            "no match at the end"
        );
        assert!(!is_immutable(&patterns, "xv1.2.3"), "no match at the start");
        assert!(!is_immutable(&patterns, "1.3-alpine"));
        assert!(is_immutable(&patterns, "1.27-alpine"), "`.*` spans the 7");
        assert!(is_immutable(&patterns, "1.2.5-alpine"));
        // An alternation stays inside the anchors.
        let (alternation, _) = immutable_patterns(&["a|b".to_owned()]);
        assert!(!is_immutable(&alternation, "ab") && is_immutable(&alternation, "b"));
    }

    #[test]
    fn bad_patterns_name_their_index() {
        let (patterns, problems) = immutable_patterns(&["ok".to_owned(), "v(1".to_owned()]);
        assert_eq!(patterns.len(), 1);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "settings.immutable_tags[1]");
        assert!(
            problems[0].1.contains("`v(1` is not a regular expression"),
            "{}",
            problems[0].1
        );
        let (_, huge) = immutable_patterns(&["a{1000}{1000}".to_owned()]);
        assert_eq!(
            huge.len(),
            1,
            "too large a pattern is refused, not compiled"
        );
    }

    #[test]
    fn pins_must_be_exact_digests() {
        let hex = "a".repeat(64);
        assert!(parse_pin(&format!("sha256:{hex}")).is_ok());
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!(" sha256:{hex}"),
            "sha256:abc".to_owned(),
            format!("md5:{hex}"),
            format!("--sha256:{hex}"),
        ] {
            assert!(parse_pin(&bad).expect_err(&bad).contains("is not a digest"));
        }
    }

    #[test]
    fn a_moved_tag_is_noticed() {
        let (pin, other) = (digest('a'), digest('b'));
        assert_eq!(moved(&pin, Some(&other)), Some(&other));
        assert_eq!(moved(&pin, Some(&pin)), None);
        assert_eq!(moved(&pin, None), None);
    }
}
