//! crane (go-containerregistry v0.22.1): argument builders and output parsing.
//!
//! `crane digest` is a HEAD request (no pull quota while it succeeds). `crane copy` copies
//! every platform and keeps the digest. Its errors are read in `super::tool_errors`.

use crate::input::reference::Digest;

/// `crane digest [--insecure] -- REF`.
pub fn digest_args(reference: &str, insecure: bool) -> Vec<String> {
    let mut args = vec!["digest".to_owned()];
    if insecure {
        args.push("--insecure".to_owned());
    }
    args.extend(["--".to_owned(), reference.to_owned()]);
    args
}

/// `crane copy [--insecure] -- SRC DST`.
pub fn copy_args(source: &str, destination: &str, insecure: bool) -> Vec<String> {
    let mut args = vec!["copy".to_owned()];
    if insecure {
        args.push("--insecure".to_owned());
    }
    args.extend(["--".to_owned(), source.to_owned(), destination.to_owned()]);
    args
}

/// The digest `crane digest` printed: its last non-empty stdout line.
pub fn parse_digest(stdout: &[u8]) -> Option<Digest> {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .and_then(Digest::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_end_options_before_references() {
        assert_eq!(
            digest_args("cache:5000/a:b", false),
            ["digest", "--", "cache:5000/a:b"]
        );
        assert_eq!(
            digest_args("cache:5000/a:b", true),
            ["digest", "--insecure", "--", "cache:5000/a:b"]
        );
        assert_eq!(
            copy_args("s@sha256:1", "d:t", false),
            ["copy", "--", "s@sha256:1", "d:t"]
        );
        assert_eq!(
            copy_args("s", "d", true),
            ["copy", "--insecure", "--", "s", "d"]
        );
    }

    #[test]
    fn the_digest_is_read_from_the_last_line() {
        let digest = format!("sha256:{}", "0".repeat(64));
        assert_eq!(
            parse_digest(format!("{digest}\n\n").as_bytes()).map(|d| d.to_string()),
            Some(digest)
        );
        assert!(parse_digest(b"nonsense\n").is_none());
    }
}
