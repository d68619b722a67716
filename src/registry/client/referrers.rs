//! The OCI 1.1 referrers API, `GET /v2/<repo>/referrers/<digest>`, through the client's
//! session (scheme, credentials, tokens, deadline).
//!
//! The referrers index is not a manifest: its GET is not a pull of the image (Docker Hub
//! meters manifest GETs). A registry without the API (Distribution 2.8, ghcr.io) answers 404
//! for the route: [`Listed::Unsupported`], and the caller falls back to the referrers tag
//! schema. Only the first page is read (registries page with `Link` only past hundreds); an
//! index larger than a manifest may be, or listing more than [`MAX_REFERRERS`] artifacts, is
//! refused as malformed.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::core::Client;
use super::manifest::MAX_MANIFEST_BYTES;
use super::session::Request;
use super::transport::{BodyError, read_capped};
use crate::input::reference::{Digest, Repository};
use crate::registry::failure::{Class, Failure, Side};

/// Most artifacts one image's referrers index may list (signatures, attestations, SBOMs:
/// a handful in practice).
pub const MAX_REFERRERS: usize = 4096;

/// One artifact whose `subject` is the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    /// The artifact manifest's digest.
    pub digest: Digest,
    /// Its `artifactType`, when the registry gives one.
    pub artifact_type: Option<String>,
}

/// What the referrers API answered.
#[derive(Debug)]
pub enum Listed {
    /// The registry serves the API; these artifacts name the image as their subject.
    Supported(Vec<Referrer>),
    /// The registry has no referrers API (404 for the route).
    Unsupported,
    /// The request failed.
    Failed(Failure),
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default, rename = "artifactType")]
    artifact_type: Option<String>,
}

impl Client {
    /// Lists the referrers of `repository@subject` within `budget`.
    pub async fn referrers(
        &self,
        repository: &Repository,
        subject: &Digest,
        side: Side,
        budget: Duration,
    ) -> Listed {
        let session = match self.session(repository, side, budget).await {
            Ok(session) => session,
            Err(refusal) => return Listed::Failed(refusal.into_failure()),
        };
        let path = format!("/v2/{}/referrers/{subject}", repository.path());
        let request = Request::new(
            Method::GET,
            &path,
            "application/vnd.oci.image.index.v1+json",
        );
        let answer = match session.send(&request).await {
            Ok(answer) => answer,
            Err(refusal) => return Listed::Failed(refusal.into_failure()),
        };
        let what = answer.what.clone();
        match answer.response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Listed::Unsupported,
            status => {
                return Listed::Failed(
                    session
                        .status_refusal(status, answer.response.headers(), &what)
                        .into_failure(),
                );
            }
        }
        let body = match read_capped(answer.response, MAX_MANIFEST_BYTES).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                return Listed::Failed(session.fail(
                    Class::Malformed,
                    format!(
                        "{what}: the referrers index is larger than {} MiB: not read",
                        MAX_MANIFEST_BYTES / (1024 * 1024)
                    ),
                ));
            }
            Err(BodyError::Broken(broken)) => {
                return Listed::Failed(session.broken(&broken, &what).into_failure());
            }
        };
        match parse_index(&body) {
            Ok(referrers) => Listed::Supported(referrers),
            Err(why) => Listed::Failed(session.fail(Class::Malformed, format!("{what}: {why}"))),
        }
    }
}

/// The referrers an OCI index lists, or why the body is not a usable one (not an index, a
/// descriptor without a valid digest, more than [`MAX_REFERRERS`] artifacts).
pub fn parse_index(body: &[u8]) -> Result<Vec<Referrer>, String> {
    let index: Index =
        serde_json::from_slice(body).map_err(|_| "the answer is not an OCI index".to_owned())?;
    if index.manifests.len() > MAX_REFERRERS {
        return Err(format!(
            "the referrers index lists {} artifacts, more than the {MAX_REFERRERS} image-sync follows",
            index.manifests.len()
        ));
    }
    index
        .manifests
        .into_iter()
        .map(|descriptor| {
            Ok(Referrer {
                digest: Digest::parse(&descriptor.digest).ok_or_else(|| {
                    format!(
                        "the referrers index lists `{}`, which is not a digest",
                        crate::input::reference::shorten(&descriptor.digest)
                    )
                })?,
                artifact_type: descriptor.artifact_type,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_lists_its_referrers_and_anything_else_is_refused() {
        let hex = "b".repeat(64);
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{hex}","size":1,"artifactType":"application/spdx+json"}}]}}"#
        );
        assert_eq!(
            parse_index(body.as_bytes()),
            Ok(vec![Referrer {
                digest: Digest::parse(&format!("sha256:{hex}")).expect("digest"),
                artifact_type: Some("application/spdx+json".to_owned()),
            }])
        );
        assert_eq!(parse_index(br#"{"manifests":[]}"#), Ok(vec![]));
        assert!(parse_index(br#"{"manifests":[{"digest":"-rf"}]}"#).is_err());
        assert!(parse_index(b"<html>").is_err());
        let many = format!(
            r#"{{"manifests":[{}]}}"#,
            vec![format!(r#"{{"digest":"sha256:{hex}"}}"#); MAX_REFERRERS + 1].join(",")
        );
        assert!(
            parse_index(many.as_bytes()).is_err_and(|why| why.contains("more than the 4096")),
            "too many"
        );
    }
}
