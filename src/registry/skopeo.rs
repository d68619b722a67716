//! skopeo (1.9): argument builders and output parsing.
//!
//! skopeo has no HEAD-only digest check: `inspect --raw --no-tags` is one manifest GET
//! (one pull on Docker Hub) and prints the manifest bytes, whose sha256 is the digest.
//! `copy --all --preserve-digests` keeps the cache digest equal to the upstream digest.
//! TLS switches are per side, and credentials come from an explicit `--authfile`.

use std::path::Path;

use crate::input::reference::Digest;

/// Options shared by every skopeo command of a run.
#[derive(Debug, Clone, Default)]
pub struct SkopeoOptions<'a> {
    /// `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`) when it exists.
    pub authfile: Option<&'a Path>,
    /// Where skopeo may write temporary files (`/var/tmp` is read-only in the pod).
    pub tmpdir: Option<&'a Path>,
}

/// `skopeo inspect --raw --no-tags [--tls-verify=false] [--authfile F] -- docker://REF`.
pub fn inspect_args(reference: &str, verify_tls: bool, options: &SkopeoOptions<'_>) -> Vec<String> {
    let mut args = global_args(options);
    args.extend(["inspect", "--raw", "--no-tags"].map(str::to_owned));
    if !verify_tls {
        args.push("--tls-verify=false".to_owned());
    }
    push_authfile(&mut args, options);
    args.extend(["--".to_owned(), format!("docker://{reference}")]);
    args
}

/// `skopeo copy --all --preserve-digests [--src-tls-verify=false] [--dest-tls-verify=false]
/// [--authfile F] -- docker://SRC docker://DST`.
pub fn copy_args(
    source: &str,
    destination: &str,
    verify_source_tls: bool,
    verify_destination_tls: bool,
    options: &SkopeoOptions<'_>,
) -> Vec<String> {
    let mut args = global_args(options);
    args.extend(["copy", "--all", "--preserve-digests"].map(str::to_owned));
    if !verify_source_tls {
        args.push("--src-tls-verify=false".to_owned());
    }
    if !verify_destination_tls {
        args.push("--dest-tls-verify=false".to_owned());
    }
    push_authfile(&mut args, options);
    args.extend([
        "--".to_owned(),
        format!("docker://{source}"),
        format!("docker://{destination}"),
    ]);
    args
}

/// The digest of the manifest `skopeo inspect --raw` printed (the exact bytes).
pub fn digest_of_raw_manifest(stdout: &[u8]) -> Option<Digest> {
    let looks_like_manifest = stdout.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    looks_like_manifest.then(|| Digest::of_bytes(stdout))
}

fn global_args(options: &SkopeoOptions<'_>) -> Vec<String> {
    match options.tmpdir {
        Some(dir) => vec!["--tmpdir".to_owned(), dir.display().to_string()],
        None => Vec::new(),
    }
}

fn push_authfile(args: &mut Vec<String>, options: &SkopeoOptions<'_>) {
    if let Some(file) = options.authfile {
        args.extend(["--authfile".to_owned(), file.display().to_string()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_keeps_every_platform_and_the_digest() {
        let options = SkopeoOptions {
            authfile: Some(Path::new("/auth/config.json")),
            tmpdir: Some(Path::new("/tmp")),
        };
        assert_eq!(
            copy_args(
                "docker.io/library/nginx@sha256:1",
                "cache:5000/library/nginx:1",
                true,
                false,
                &options
            ),
            [
                "--tmpdir",
                "/tmp",
                "copy",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
                "--authfile",
                "/auth/config.json",
                "--",
                "docker://docker.io/library/nginx@sha256:1",
                "docker://cache:5000/library/nginx:1"
            ]
        );
        let plain = copy_args("a", "b", false, true, &SkopeoOptions::default());
        assert!(
            plain.contains(&"--src-tls-verify=false".to_owned())
                && !plain.iter().any(|a| a.starts_with("--dest-tls"))
        );
    }

    #[test]
    fn inspect_is_the_cheapest_single_get() {
        assert_eq!(
            inspect_args("cache:5000/a:b", false, &SkopeoOptions::default()),
            [
                "inspect",
                "--raw",
                "--no-tags",
                "--tls-verify=false",
                "--",
                "docker://cache:5000/a:b"
            ]
        );
        assert!(
            !inspect_args("ghcr.io/a:b", true, &SkopeoOptions::default())
                .iter()
                .any(|a| a.contains("tls"))
        );
    }

    #[test]
    fn raw_manifests_hash_to_their_digest() {
        assert_eq!(
            digest_of_raw_manifest(b"{}").map(|d| d.to_string()),
            Some(Digest::of_bytes(b"{}").to_string())
        );
        assert!(digest_of_raw_manifest(b"").is_none());
    }
}
