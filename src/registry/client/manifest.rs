//! The digest check: the digest of a tag by one manifest HEAD (free on Docker Hub), or the
//! manifest itself by a GET where that is what is wanted (the cache's copy, whose index
//! children are counted) or where a HEAD gave no digest.
//!
//! crane's rule: only a HEAD whose answer lacks `Docker-Content-Digest` falls back to a GET,
//! for that answer. A host whose HEADs lack it [`NO_DIGEST_STREAK`] times in a row is
//! remembered (with one warning saying so; `NO_DIGEST_STREAK`): its later checks GET at once.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use super::core::Client;
use super::session::{Refusal, Request};
use crate::input::reference::{Digest, Repository, Tag};
use crate::registry::failure::{Class, Failure, Side};

/// Every manifest type a tag may point at; the registry answers with the stored one and
/// its digest, without conversion.
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// A manifest larger than this is not one image-sync copies (registries refuse manifests
/// past a few MiB; Distribution's limit is 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The answer of one check.
#[derive(Debug)]
pub enum Checked {
    /// The registry's digest for the tag, and the manifest GETs (pulls) it cost.
    Digest {
        /// The digest.
        digest: Digest,
        /// Manifest GETs sent (0 when a HEAD answered).
        gets: u32,
        /// How many manifests an index lists (0 for an image manifest), when the body was
        /// read.
        children: Option<u32>,
    },
    /// A failure the registry (or the network) made clear.
    Failed(Failure),
    /// Not handled here; crane should do this check (the reason is for the debug log).
    Delegate(String),
}

impl From<Refusal> for Checked {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Failed(failure) => Self::Failed(failure),
            Refusal::Unhandled { why, .. } => Self::Delegate(why),
        }
    }
}

/// What a check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The digest: a HEAD (a GET only where HEAD gives none).
    Digest,
    /// The manifest itself: a GET (for a cache, where GETs cost no quota), so that the
    /// children of an index are known.
    Manifest,
    /// The response headers of a HEAD (the quota): never a GET.
    Headers,
}

impl Client {
    /// Reads the digest of `repository:tag` on `side` within `budget`: one HEAD (plus a
    /// token request the first time a repository needs one), or one GET when `want` is the
    /// manifest, when this HEAD gave no digest, or on a host whose HEADs never do.
    pub async fn digest(
        &self,
        repository: &Repository,
        tag: &Tag,
        side: Side,
        budget: Duration,
        want: Want,
    ) -> Checked {
        let session = match self.session(repository, side, budget).await {
            Ok(session) => session,
            Err(refusal) => return refusal.into(),
        };
        let host = repository.host();
        let path = format!("/v2/{}/manifests/{tag}", repository.path());
        let mut get = want == Want::Manifest
            || (want == Want::Digest && self.facts(host).head_gives_no_digest);
        loop {
            let method = if get { Method::GET } else { Method::HEAD };
            let request = Request::new(method, &path, MANIFEST_TYPES).manifest();
            let answer = match session.send(&request).await {
                Ok(answer) => answer,
                Err(refusal) => return refusal.into(),
            };
            let status = answer.response.status();
            if status != StatusCode::OK {
                return session
                    .status_refusal(status, answer.response.headers(), &answer.what)
                    .into();
            }
            let stated = super::manifests::stated_digest(&answer.response);
            if !get {
                match stated {
                    Some(digest) => {
                        self.head_had_digest(host);
                        return Checked::Digest {
                            digest,
                            gets: session.gets(),
                            children: None,
                        };
                    }
                    None if want == Want::Headers => {
                        return Checked::Delegate(format!(
                            "{}: no Docker-Content-Digest (headers read)",
                            answer.what
                        ));
                    }
                    None => {
                        self.head_lacked_digest(host);
                        get = true;
                        continue;
                    }
                }
            }
            let what = answer.what;
            let body = match super::manifests::read_manifest(&session, answer.response, &what).await
            {
                Ok(body) => body,
                Err(refusal) => return refusal.into(),
            };
            let children = match parse_manifest(&body) {
                Ok(children) => children,
                Err(why) => {
                    return Checked::Failed(
                        session.fail(Class::Malformed, format!("{what}: {why}")),
                    );
                }
            };
            let digest = Digest::of_bytes(&body);
            return match stated {
                Some(stated) if stated != digest => Checked::Failed(session.fail(
                    Class::DigestDrift,
                    format!(
                        "{what}: the registry says it holds {stated}, but serves a manifest whose digest is {digest}"
                    ),
                )),
                _ => Checked::Digest {
                    digest,
                    gets: session.gets(),
                    children: Some(children),
                },
            };
        }
    }
}

/// How many manifests an index lists (0 for an image manifest), or why the bytes are no
/// manifest (every manifest type is a JSON object).
pub fn parse_manifest(manifest: &[u8]) -> Result<u32, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Option<Vec<serde::de::IgnoredAny>>,
    }
    if manifest.trim_ascii_start().first() != Some(&b'{') {
        return Err("the manifest is not a JSON object".to_owned());
    }
    serde_json::from_slice::<Index>(manifest)
        .map(|index| {
            u32::try_from(index.manifests.map_or(0, |children| children.len())).unwrap_or(u32::MAX)
        })
        .map_err(|err| format!("the manifest is not JSON ({err})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_counts_its_children_and_what_is_no_manifest_is_refused() {
        assert_eq!(parse_manifest(br#"{"manifests":[{},{}]}"#), Ok(2));
        assert_eq!(parse_manifest(br#" {"layers":[]}"#), Ok(0));
        assert!(parse_manifest(b"{\"manifests\":[{}").is_err(), "truncated");
        assert!(parse_manifest(b"\xff").is_err());
        assert!(parse_manifest(b"[[]]").is_err());
        assert!(parse_manifest(br#"{"manifests":7}"#).is_err());
    }
}
