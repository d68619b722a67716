//! Shards: one run split over several pods (a Kubernetes Indexed Job), each image (after
//! tag selection) in exactly one shard.
//!
//! The owner of an image is `u64_be(sha256("SOURCE\nTAG\nTARGET")[0..8]) % COUNT`, where
//! SOURCE is the normalised upstream repository (`docker.io/library/nginx`), TAG the tag
//! and TARGET the cache repository (`cache:5000/library/nginx`). The hash is fixed, never
//! Rust's randomly seeded `DefaultHasher`, so every pod of a Job, and every release of
//! image-sync, agrees on the partition; and an image's shard depends only on that image,
//! so adding or removing an image moves no other one. SHA-256 rather than FNV-1a: FNV's
//! low bits (all that `% 4` keeps) spread similar names badly (65/14/68/53 images of 200
//! over four shards in this module's test).

use std::fmt;

use serde::Serialize;

use crate::input::plan::Job;

/// The variable Kubernetes sets in each pod of an Indexed Job (`completionMode: Indexed`).
pub const INDEX_VAR: &str = "JOB_COMPLETION_INDEX";

/// Upper bound on the shard count: far more pods than any cache needs, small enough that
/// a typo (`--shard-count 40000`) is an error rather than thousands of empty shards.
pub const MAX_COUNT: u32 = 1024;

/// One shard of a run: `index` from 0 to `count - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    /// This pod's shard, from 0 (as `JOB_COMPLETION_INDEX`).
    pub index: u32,
    /// How many shards the images are split into.
    pub count: u32,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// A shard, checked: `count` from 1 to [`MAX_COUNT`], `index` below `count`.
    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        check_count(count)?;
        if index >= count {
            return Err(format!(
                "shard index {index} is not below the shard count {count} (indexes run from 0 to {})",
                count - 1
            ));
        }
        Ok(Self { index, count })
    }

    /// Whether this shard owns `job`.
    pub fn owns(&self, job: &Job) -> bool {
        owner(job, self.count) == self.index
    }
}

/// A shard count from 1 to [`MAX_COUNT`].
pub fn check_count(count: u32) -> Result<u32, String> {
    if (1..=MAX_COUNT).contains(&count) {
        Ok(count)
    } else {
        Err(format!(
            "shard count {count} must be between 1 and {MAX_COUNT}"
        ))
    }
}

/// Parses `--shard INDEX/COUNT` (for clap).
pub fn parse(text: &str) -> Result<Shard, String> {
    let (index, count) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not INDEX/COUNT (for example 0/4)"))?;
    let number = |part: &str, what: &str| {
        part.trim()
            .parse::<u32>()
            .map_err(|_| format!("`{text}`: the {what} `{part}` is not a whole number"))
    };
    Shard::new(number(index, "index")?, number(count, "count")?)
}

/// Parses `--shard-count COUNT` (for clap).
pub fn parse_count(text: &str) -> Result<u32, String> {
    let count = text
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    check_count(count)
}

/// The shard of a pod given `--shard-count COUNT`: its index from `JOB_COMPLETION_INDEX`
/// (`value`, `None` when unset).
pub fn from_index_var(count: u32, value: Option<&str>) -> Result<Shard, String> {
    let value = value.ok_or_else(|| {
        format!(
            "--shard-count {count} needs {INDEX_VAR} (set by Kubernetes in an Indexed Job); outside one, pass --shard INDEX/{count}"
        )
    })?;
    let index = value
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("{INDEX_VAR}=`{value}` is not a whole number"))?;
    Shard::new(index, count)
        .map_err(|err| format!("{INDEX_VAR}={index} with --shard-count {count}: {err}"))
}

/// The shard a run syncs, from `--shard` or `--shard-count` with `JOB_COMPLETION_INDEX`
/// (`index_var`); `None` for an unsharded run.
pub fn select(
    shard: Option<Shard>,
    count: Option<u32>,
    index_var: Option<&str>,
) -> Result<Option<Shard>, String> {
    match (shard, count) {
        (Some(shard), _) => Ok(Some(shard)),
        (None, Some(count)) => from_index_var(count, index_var).map(Some),
        (None, None) => Ok(None),
    }
}

/// The shard (0 to `count - 1`) that owns `job`.
pub fn owner(job: &Job, count: u32) -> u32 {
    let key = format!("{}\n{}\n{}", job.source, job.tag, job.target);
    u32::try_from(key_hash(key.as_bytes()) % u64::from(count.max(1))).unwrap_or(0)
}

/// The first 8 bytes of the key's SHA-256, big-endian.
pub fn key_hash(key: &[u8]) -> u64 {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(key);
    let mut prefix = [0_u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::reference::{Repository, Tag};

    fn job(index: usize, source: &str, tag: &str) -> Job {
        let source = Repository::parse_source(source).expect("source");
        Job {
            tag: Tag::parse(tag).expect("tag"),
            immutable: false,
            selected_by: None,
            entry: std::sync::Arc::new(crate::input::plan::Entry {
                index,
                image: source.to_string().into(),
                target: Repository::new("cache:5000", source.path()),
                source,
                pin: None,
                watch_tag: true,
                referrers: false,
                platforms: None,
            }),
        }
    }

    #[test]
    fn the_key_hash_is_the_sha256_prefix() {
        // sha256("") = e3b0c44298fc1c14...; sha256("abc") = ba7816bf8f01cfea...
        assert_eq!(key_hash(b""), 0xe3b0_c442_98fc_1c14);
        assert_eq!(key_hash(b"abc"), 0xba78_16bf_8f01_cfea);
    }

    #[test]
    fn the_owner_is_fixed_across_releases() {
        // Changing the hash or the key would move images between pods of a running Job:
        // these values pin both.
        let nginx = job(0, "nginx", "1.27-alpine");
        assert_eq!(
            format!("{}\n{}\n{}", nginx.source, nginx.tag, nginx.target),
            "docker.io/library/nginx\n1.27-alpine\ncache:5000/library/nginx"
        );
        let key = key_hash(b"docker.io/library/nginx\n1.27-alpine\ncache:5000/library/nginx");
        assert_eq!(owner(&nginx, 4), (key % 4) as u32);
        assert_eq!(owner(&nginx, 1_000), (key % 1_000) as u32);
        assert_eq!(owner(&nginx, 1), 0);
        // Normalisation: the same image however it is written.
        assert_eq!(
            owner(&job(0, "docker.io/library/nginx", "1.27-alpine"), 7),
            owner(&nginx, 7)
        );
    }

    #[test]
    fn every_image_lands_in_exactly_one_shard_and_adding_one_moves_no_other() {
        let jobs: Vec<Job> = (0..200)
            .map(|i| job(i, &format!("team/app{i}"), &format!("v{}", i % 3)))
            .collect();
        for count in [1, 2, 4, 7] {
            let mut seen = vec![0; jobs.len()];
            for index in 0..count {
                let shard = Shard::new(index, count).expect("shard");
                for (position, job) in jobs.iter().enumerate() {
                    if shard.owns(job) {
                        seen[position] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&times| times == 1), "count {count}");
        }
        let before: Vec<u32> = jobs.iter().map(|job| owner(job, 4)).collect();
        let mut more = jobs.clone();
        more.insert(3, job(999, "team/newcomer", "1"));
        let after: Vec<u32> = more
            .iter()
            .filter(|job| job.index != 999)
            .map(|job| owner(job, 4))
            .collect();
        assert_eq!(before, after);
        // 200 images over 4 shards: no shard is empty or holds more than twice its share.
        let mut sizes = [0; 4];
        for shard in before {
            sizes[shard as usize] += 1;
        }
        assert!(
            sizes.iter().all(|&size| (25..=100).contains(&size)),
            "{sizes:?}"
        );
    }

    #[test]
    fn arguments_are_checked_with_clear_messages() {
        assert_eq!(parse("2/4"), Ok(Shard { index: 2, count: 4 }));
        assert!(parse("4/4").expect_err("index").contains("not below"));
        assert!(parse("0/0").expect_err("zero").contains("between 1 and"));
        assert!(parse("1").expect_err("form").contains("INDEX/COUNT"));
        assert!(
            parse("-1/4")
                .expect_err("negative")
                .contains("whole number")
        );
        assert!(parse("a/4").expect_err("text").contains("index `a`"));
        assert_eq!(parse_count("4"), Ok(4));
        assert!(parse_count("0").is_err());
        assert!(parse_count("2000").expect_err("large").contains("1024"));
        assert_eq!(
            from_index_var(4, Some("3")),
            Ok(Shard { index: 3, count: 4 })
        );
        assert!(
            from_index_var(4, None)
                .expect_err("unset")
                .contains("JOB_COMPLETION_INDEX")
        );
        let message = from_index_var(4, Some("4")).expect_err("too large");
        assert!(
            message.contains("JOB_COMPLETION_INDEX=4") && message.contains("--shard-count 4"),
            "{message}"
        );
        assert!(from_index_var(4, Some("x")).is_err());
    }
}
