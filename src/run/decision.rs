//! Copy or skip: the digest-first decision, as a pure function.

use crate::input::reference::Digest;

/// What to do with one image once both digests are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The cache holds the upstream digest under this tag: nothing to do.
    AlreadyCached,
    /// The cache is missing the tag or holds another digest: copy.
    Copy,
    /// As `Copy`, but this is a dry run: report it and write nothing.
    WouldCopy,
}

/// Decides from the upstream digest and the cache's digest (`None`: not cached).
pub fn decide(upstream: &Digest, cached: Option<&Digest>, dry_run: bool) -> Decision {
    match cached {
        Some(cached) if cached == upstream => Decision::AlreadyCached,
        _ if dry_run => Decision::WouldCopy,
        _ => Decision::Copy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(fill: char) -> Digest {
        Digest::parse(&format!("sha256:{}", fill.to_string().repeat(64))).expect("valid digest")
    }

    #[test]
    fn only_an_identical_digest_skips_the_copy() {
        let (a, b) = (digest('a'), digest('b'));
        assert_eq!(decide(&a, Some(&a), false), Decision::AlreadyCached);
        assert_eq!(decide(&a, Some(&a), true), Decision::AlreadyCached);
        assert_eq!(decide(&a, Some(&b), false), Decision::Copy);
        assert_eq!(decide(&a, None, false), Decision::Copy);
        assert_eq!(decide(&a, None, true), Decision::WouldCopy);
        assert_eq!(decide(&a, Some(&b), true), Decision::WouldCopy);
    }
}
