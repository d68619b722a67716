//! Platforms: `settings.platforms` and an image's own `platforms:` (`os/arch[/variant]`, or
//! `all` for no filter), parsed and validated before anything runs, and matched against
//! the `platform` of an index's children.

use std::fmt;

/// One platform as written: `linux/amd64`, `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `amd64`, `arm64`, `arm`, ...
    pub architecture: String,
    /// `v7`, `v8`, ... when given.
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Parses `os/arch[/variant]`: lowercase letters, digits, `_`, `.` and `-`, each part 1
    /// to 32 characters.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let parts: Vec<&str> = raw.split('/').collect();
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 32
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|part| valid(part)) {
            return Err(format!(
                "`{}` is not a platform: write `os/arch` or `os/arch/variant` in lowercase (`linux/amd64`, `linux/arm/v7`), or `all`",
                crate::input::reference::shorten(raw)
            ));
        }
        Ok(Self {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|variant| (*variant).to_owned()),
        })
    }

    /// Whether an index child's platform is this one. A platform written without a variant
    /// matches every variant of its os/arch; `arm64` without a variant and `arm64/v8` are
    /// the same platform (as containerd matches them).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        if self.os != os || self.architecture != architecture {
            return false;
        }
        let normal = |variant: Option<&str>| match (architecture, variant) {
            ("arm64", None | Some("")) => Some("v8".to_owned()),
            (_, Some("")) => None,
            (_, other) => other.map(str::to_owned),
        };
        match &self.variant {
            None => true,
            Some(wanted) => normal(Some(wanted)) == normal(variant),
        }
    }
}

/// A resolved platform filter: the platforms to keep (sorted, no duplicates), or none
/// (`all`: every platform, the index copied as it is).
pub type Filter = Option<Vec<Platform>>;

/// Parses a `platforms` list: `["all"]` is no filter; anything else a list of platforms.
/// Every entry's problem is reported with its position (`platforms[2]`).
pub fn parse_list(raw: &[String]) -> Result<Filter, Vec<(usize, String)>> {
    if raw.is_empty() {
        return Err(vec![(
            0,
            "is empty; list platforms (`linux/amd64`) or write `[all]`".to_owned(),
        )]);
    }
    let all = raw.iter().any(|entry| entry.trim() == "all");
    if all {
        if raw.len() > 1 {
            return Err(vec![(
                0,
                "`all` stands alone: it keeps every platform, so other entries beside it mean nothing"
                    .to_owned(),
            )]);
        }
        return Ok(None);
    }
    let mut problems = Vec::new();
    let mut platforms = Vec::new();
    for (position, entry) in raw.iter().enumerate() {
        match Platform::parse(entry) {
            Ok(platform) => platforms.push(platform),
            Err(message) => problems.push((position, message)),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    platforms.sort();
    platforms.dedup();
    Ok(Some(platforms))
}

/// The filter as it is recorded in a filtered index's annotation: the platforms, sorted,
/// comma-separated.
pub fn describe(platforms: &[Platform]) -> String {
    platforms
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Result<Filter, Vec<(usize, String)>> {
        parse_list(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn platforms_parse_and_all_means_no_filter() {
        assert_eq!(list(&["all"]), Ok(None));
        let parsed = list(&["linux/arm64", "linux/amd64", "linux/arm/v7", "linux/amd64"])
            .expect("valid")
            .expect("a filter");
        assert_eq!(describe(&parsed), "linux/amd64,linux/arm/v7,linux/arm64");
        for bad in [
            "linux",
            "Linux/amd64",
            "linux/amd64/v2/x",
            "linux//v7",
            "linux/amd64 ",
        ] {
            let problems = list(&["linux/amd64", bad]).expect_err(bad);
            assert_eq!(problems[0].0, 1, "{bad}");
            assert!(problems[0].1.contains("is not a platform"), "{bad}");
        }
        assert!(list(&[]).is_err());
        assert!(list(&["all", "linux/amd64"]).is_err());
    }

    #[test]
    fn variants_match_as_containerd_matches_them() {
        let arm64 = Platform::parse("linux/arm64").expect("valid");
        assert!(arm64.matches("linux", "arm64", Some("v8")));
        assert!(arm64.matches("linux", "arm64", None));
        let v8 = Platform::parse("linux/arm64/v8").expect("valid");
        assert!(v8.matches("linux", "arm64", None));
        assert!(v8.matches("linux", "arm64", Some("v8")));
        let v7 = Platform::parse("linux/arm/v7").expect("valid");
        assert!(v7.matches("linux", "arm", Some("v7")));
        assert!(!v7.matches("linux", "arm", Some("v6")));
        assert!(!v7.matches("linux", "arm", None));
        assert!(!arm64.matches("linux", "amd64", None));
        assert!(!arm64.matches("windows", "arm64", None));
    }
}
