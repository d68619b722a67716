//! The OCI 1.1 referrers API, `GET /v2/<repo>/referrers/<digest>`, read with the client's
//! scheme, credentials and tokens (a child of `client`, so it shares them without widening
//! what `client` exports).
//!
//! The referrers index is not a manifest: its GET is not a pull of the image (Docker Hub
//! meters manifest GETs). A registry without the API (Distribution 2.8, ghcr.io) answers 404
//! for the route: [`Listed::Unsupported`], and the caller falls back to the referrers tag
//! schema. Only the first page is read (registries page with `Link` only past hundreds).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde::Deserialize;

use super::{
    Auth, AuthKind, Check, Checked, Client, read_manifest, status_answer, transport_failure,
};
use crate::input::reference::{Digest, Repository, Tag};
use crate::registry::credentials::Lookup;
use crate::registry::failure::{Class, Failure, Side};

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
        let deadline = Instant::now() + budget;
        let host = repository.host();
        let failed = |class: Class, detail: String| {
            Listed::Failed(Failure::new(class, detail).on(side, Some(host)))
        };
        let credentials = match self.keyring.lookup(host, repository.path()).await {
            Lookup::Delegate => {
                return failed(
                    Class::Other,
                    format!(
                        "the referrers of {} need credentials only crane can use (an identity token or a helper it must judge)",
                        repository.with_digest(subject)
                    ),
                );
            }
            Lookup::Anonymous => None,
            Lookup::Basic(basic) => Some(basic),
        };
        // Messages and token scopes name the repository; the tag is the subject's tag-schema name.
        let Ok(tag) = Tag::parse(&subject.as_str().replace(':', "-")) else {
            return failed(Class::Other, format!("{subject} is not a digest"));
        };
        let check = Check {
            repository,
            tag: &tag,
            side,
            credentials: credentials.as_ref(),
            budget,
            want: super::Want::Digest,
        };
        // The image's own check ran first and found the scheme; else crane's order.
        let Some(scheme) = self
            .facts(host)
            .scheme
            .or_else(|| self.schemes_for(host).first().copied())
        else {
            return failed(Class::Other, format!("no scheme for {host}"));
        };
        let (client, base) = self.endpoint(scheme, host);
        let url = format!("{base}/v2/{}/referrers/{subject}", repository.path());
        let what = format!("GET {url}");
        let mut stale = None;
        // The request, then at most one round of authentication and the request again.
        for round in 0..2 {
            // What the image's own check learnt about the host's auth, or the challenge below.
            let auth = match self
                .known_auth(scheme, &check, stale.as_deref(), deadline)
                .await
            {
                Ok(auth) => auth,
                Err(checked) => return from_checked(checked, side, host),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Listed::Failed(Failure::timed_out(budget, &what).on(side, Some(host)));
            }
            let mut request = client
                .get(&url)
                .header(ACCEPT, "application/vnd.oci.image.index.v1+json")
                .timeout(left);
            request = match &auth {
                Some(Auth::Bearer(token)) => request.bearer_auth(token),
                Some(Auth::Basic(basic)) => {
                    request.basic_auth(&basic.username, Some(&basic.password))
                }
                None => request,
            };
            let response = match request.send().await {
                Ok(response) => response,
                Err(err) => {
                    return match transport_failure(&err, &what, &check) {
                        super::Attempt::Answer(checked) | super::Attempt::WrongScheme(checked) => {
                            from_checked(checked, side, host)
                        }
                    };
                }
            };
            match response.status() {
                StatusCode::OK => {
                    let Some(body) = read_manifest(response).await else {
                        return failed(
                            Class::Other,
                            format!("{what}: the index could not be read"),
                        );
                    };
                    return match parse_index(&body) {
                        Some(referrers) => Listed::Supported(referrers),
                        None => failed(
                            Class::Other,
                            format!("{what}: the answer is not an OCI index"),
                        ),
                    };
                }
                StatusCode::NOT_FOUND => return Listed::Unsupported,
                StatusCode::UNAUTHORIZED if round == 0 => {
                    match super::auth::challenge(response.headers()) {
                        Some(super::auth::Challenge::Bearer { realm, service }) => {
                            self.learn(host, |facts| {
                                facts.auth = Some(AuthKind::Bearer { realm, service });
                            });
                            stale = match &auth {
                                Some(Auth::Bearer(token)) => Some(token.clone()),
                                _ => None,
                            };
                        }
                        Some(super::auth::Challenge::Basic) if check.credentials.is_some() => {
                            self.learn(host, |facts| facts.auth = Some(AuthKind::Basic));
                        }
                        _ => {
                            return failed(
                                Class::Unauthorized,
                                format!("{what}: 401 Unauthorized"),
                            );
                        }
                    }
                }
                status => {
                    return from_checked(
                        status_answer(status, response.headers(), &what, &check),
                        side,
                        host,
                    );
                }
            }
        }
        failed(
            Class::Unauthorized,
            format!("{what}: 401 Unauthorized after authenticating"),
        )
    }
}

/// A check's answer as a listing failure (an answer crane would have taken over for a
/// digest check has no crane equivalent here: it is a failure of its own).
fn from_checked(checked: Checked, side: Side, host: &str) -> Listed {
    match checked {
        Checked::Failed(failure) => Listed::Failed(failure),
        Checked::Delegate(why) => {
            Listed::Failed(Failure::new(Class::Other, why).on(side, Some(host)))
        }
        Checked::Digest { .. } => Listed::Failed(
            Failure::new(
                Class::Other,
                "a digest where a referrers index was expected",
            )
            .on(side, Some(host)),
        ),
    }
}

/// The referrers an OCI index lists; `None` when the body is not one.
pub fn parse_index(body: &[u8]) -> Option<Vec<Referrer>> {
    let index: Index = serde_json::from_slice(body).ok()?;
    index
        .manifests
        .into_iter()
        .map(|descriptor| {
            Some(Referrer {
                digest: Digest::parse(&descriptor.digest)?,
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
            Some(vec![Referrer {
                digest: Digest::parse(&format!("sha256:{hex}")).expect("digest"),
                artifact_type: Some("application/spdx+json".to_owned()),
            }])
        );
        assert_eq!(parse_index(br#"{"manifests":[]}"#), Some(vec![]));
        assert_eq!(parse_index(br#"{"manifests":[{"digest":"-rf"}]}"#), None);
        assert_eq!(parse_index(b"<html>"), None);
    }
}
