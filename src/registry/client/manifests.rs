//! Manifest reads and writes by tag or digest, through the client's session (scheme,
//! credentials, tokens with push scope for writes, deadline): HEAD (digest, media type),
//! GET (the bytes, digest checked), PUT (a manifest image-sync built: a filtered index, a
//! record), DELETE (prune), and a blob upload for the records' contents.
//!
//! Upstream manifest HEADs and GETs are counted in the quota ledger by the session, as
//! every manifest request is.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use super::core::Client;
use super::manifest::{MANIFEST_TYPES, MAX_MANIFEST_BYTES};
use super::session::{Answer, Refusal, Request, Session};
use super::transport::{BodyError, read_capped};
use crate::input::reference::{Digest, Repository};
use crate::registry::failure::{Class, Failure, Side};

/// A manifest's head: its digest and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `Docker-Content-Digest`.
    pub digest: Digest,
    /// `Content-Type`.
    pub media_type: String,
}

/// A manifest read by GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The bytes, exactly as served.
    pub bytes: Vec<u8>,
    /// `Content-Type`, else the manifest's own `mediaType`.
    pub media_type: String,
    /// The sha256 of the bytes (checked against `Docker-Content-Digest`).
    pub digest: Digest,
}

/// What a manifest DELETE did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// 202: gone.
    Deleted,
    /// 404: already gone.
    Missing,
    /// The registry does not delete this way (a tag on Distribution 2.8: 400
    /// `DIGEST_INVALID`; deletes disabled: 405 `UNSUPPORTED`), with the status and code.
    Unsupported {
        /// The HTTP status.
        status: u16,
        /// The registry's error code, when it sent one.
        code: Option<String>,
    },
}

/// A registry error body's first code (`{"errors":[{"code":"..."}]}`).
pub fn error_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
    }
    let errors: Errors = serde_json::from_slice(body).ok()?;
    errors
        .errors
        .into_iter()
        .next()
        .map(|entry| crate::input::reference::shorten(&entry.code))
}

fn content_type(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or(value).trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The `Docker-Content-Digest` an answer states, when it holds a digest.
pub(super) fn stated_digest(response: &reqwest::Response) -> Option<Digest> {
    response
        .headers()
        .get("docker-content-digest")
        .and_then(|value| value.to_str().ok())
        .and_then(Digest::parse)
}

/// One manifest request (HEAD or GET) of `repository` at `reference`: `None` when it is
/// missing (404), the registry's refusal for any status but 200, else the answer (its body
/// unread) and the digest it states.
async fn manifest_answer(
    session: &Session<'_>,
    repository: &Repository,
    reference: &str,
    method: Method,
) -> Result<Option<(Answer, Option<Digest>)>, Failure> {
    let path = format!("/v2/{}/manifests/{reference}", repository.path());
    let request = Request::new(method, &path, MANIFEST_TYPES).manifest();
    let answer = session
        .send(&request)
        .await
        .map_err(Refusal::into_failure)?;
    let status = answer.response.status();
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if status != StatusCode::OK {
        return Err(session
            .status_refusal(status, answer.response.headers(), &answer.what)
            .into_failure());
    }
    let stated = stated_digest(&answer.response);
    Ok(Some((answer, stated)))
}

/// A manifest's body, read up to [`MAX_MANIFEST_BYTES`] (a larger one is refused unread).
pub(super) async fn read_manifest(
    session: &Session<'_>,
    response: reqwest::Response,
    what: &str,
) -> Result<Vec<u8>, Refusal> {
    match read_capped(response, MAX_MANIFEST_BYTES).await {
        Ok(bytes) => Ok(bytes),
        Err(BodyError::TooLarge) => Err(Refusal::Failed(session.fail(
            Class::Malformed,
            format!(
                "{what}: the manifest is larger than {} MiB, which no registry accepts: not read",
                MAX_MANIFEST_BYTES / (1024 * 1024)
            ),
        ))),
        Err(BodyError::Broken(broken)) => Err(session.broken(&broken, what)),
    }
}

impl Client {
    async fn open<'a>(
        &'a self,
        repository: &'a Repository,
        side: Side,
        budget: Duration,
    ) -> Result<Session<'a>, Failure> {
        self.session(repository, side, budget)
            .await
            .map_err(Refusal::into_failure)
    }

    /// HEAD of `repository` at `reference` (a tag or a digest): `None` when it is missing.
    pub async fn head_manifest(
        &self,
        repository: &Repository,
        reference: &str,
        side: Side,
        budget: Duration,
    ) -> Result<Option<Head>, Failure> {
        let session = self.open(repository, side, budget).await?;
        let Some((answer, stated)) =
            manifest_answer(&session, repository, reference, Method::HEAD).await?
        else {
            return Ok(None);
        };
        let digest = stated.ok_or_else(|| {
            session.fail(
                Class::Malformed,
                format!("{}: no Docker-Content-Digest", answer.what),
            )
        })?;
        Ok(Some(Head {
            digest,
            media_type: content_type(&answer.response).unwrap_or_default(),
        }))
    }

    /// GET of `repository` at `reference`: `None` when it is missing. The digest is the
    /// sha256 of the bytes; a `Docker-Content-Digest` saying otherwise is a failure.
    pub async fn get_manifest(
        &self,
        repository: &Repository,
        reference: &str,
        side: Side,
        budget: Duration,
    ) -> Result<Option<Fetched>, Failure> {
        let session = self.open(repository, side, budget).await?;
        let Some((answer, stated)) =
            manifest_answer(&session, repository, reference, Method::GET).await?
        else {
            return Ok(None);
        };
        let header_type = content_type(&answer.response);
        let what = answer.what;
        let bytes = read_manifest(&session, answer.response, &what)
            .await
            .map_err(Refusal::into_failure)?;
        let digest = Digest::of_bytes(&bytes);
        if let Some(stated) = stated.filter(|stated| *stated != digest) {
            return Err(session.fail(
                Class::DigestDrift,
                format!("{what}: the registry says {stated}, but serves a manifest whose digest is {digest}"),
            ));
        }
        if let Some(wanted) = Digest::parse(reference)
            && wanted != digest
        {
            return Err(session.fail(
                Class::DigestDrift,
                format!("{what}: asked for {wanted}, served a manifest whose digest is {digest}"),
            ));
        }
        let media_type = header_type
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()?
                    .get("mediaType")?
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        Ok(Some(Fetched {
            bytes,
            media_type,
            digest,
        }))
    }

    /// PUT of `bytes` (of `media_type`) to the cache's `repository` at `reference`; the
    /// digest the cache reports (it must be the bytes' digest).
    pub async fn put_manifest(
        &self,
        repository: &Repository,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
        budget: Duration,
    ) -> Result<Digest, Failure> {
        let session = self.open(repository, Side::Cache, budget).await?;
        let path = format!("/v2/{}/manifests/{reference}", repository.path());
        let request = Request::new(Method::PUT, &path, "*/*")
            .push()
            .body(media_type, bytes);
        let answer = session
            .send(&request)
            .await
            .map_err(Refusal::into_failure)?;
        let status = answer.response.status();
        let expected = Digest::of_bytes(bytes);
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(write_refused(&session, answer).await);
        }
        match stated_digest(&answer.response) {
            Some(stated) if stated != expected => Err(session.fail(
                Class::DigestDrift,
                format!(
                    "{}: the cache stored {stated} for a manifest whose digest is {expected}",
                    answer.what
                ),
            )),
            _ => Ok(expected),
        }
    }

    /// DELETE of the cache's `repository` at `reference` (a tag or a digest).
    pub async fn delete_manifest(
        &self,
        repository: &Repository,
        reference: &str,
        budget: Duration,
    ) -> Result<Deleted, Failure> {
        let session = self.open(repository, Side::Cache, budget).await?;
        let path = format!("/v2/{}/manifests/{reference}", repository.path());
        let request = Request::new(Method::DELETE, &path, "*/*").push();
        let answer = session
            .send(&request)
            .await
            .map_err(Refusal::into_failure)?;
        let status = answer.response.status();
        match status {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => Ok(Deleted::Deleted),
            StatusCode::NOT_FOUND => Ok(Deleted::Missing),
            StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => {
                let body = read_capped(answer.response, 64 * 1024)
                    .await
                    .unwrap_or_default();
                Ok(Deleted::Unsupported {
                    status: status.as_u16(),
                    code: error_code(&body),
                })
            }
            _ => Err(session
                .status_refusal(status, answer.response.headers(), &answer.what)
                .into_failure()),
        }
    }

    /// Uploads `bytes` as a blob of the cache's `repository` (skipped when it is there):
    /// `POST /blobs/uploads/`, then one `PUT` of the whole blob to the upload's location.
    pub async fn put_blob(
        &self,
        repository: &Repository,
        bytes: &[u8],
        budget: Duration,
    ) -> Result<Digest, Failure> {
        let digest = Digest::of_bytes(bytes);
        let session = self.open(repository, Side::Cache, budget).await?;
        let refuse = |refusal: Refusal| refusal.into_failure();
        let blob = format!("/v2/{}/blobs/{digest}", repository.path());
        let head = session
            .send(&Request::new(Method::HEAD, &blob, "*/*").push())
            .await
            .map_err(refuse)?;
        if head.response.status() == StatusCode::OK {
            return Ok(digest);
        }
        let start = format!("/v2/{}/blobs/uploads/", repository.path());
        let started = session
            .send(
                &Request::new(Method::POST, &start, "*/*")
                    .push()
                    .body("application/octet-stream", &[]),
            )
            .await
            .map_err(refuse)?;
        if started.response.status() != StatusCode::ACCEPTED {
            return Err(write_refused(&session, started).await);
        }
        let location = started
            .response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|location| started.url.join(location).ok())
            .filter(|url| {
                url.host_str() == started.url.host_str() && url.port() == started.url.port()
            })
            .ok_or_else(|| {
                session.fail(
                    Class::Malformed,
                    format!("{}: no usable Location for the upload", started.what),
                )
            })?;
        let mut path = location.path().to_owned();
        let mut query: Vec<(String, String)> = location
            .query_pairs()
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        query.push(("digest".to_owned(), digest.to_string()));
        let encoded: String = reqwest::Url::parse_with_params("http://x/", &query)
            .map(|url| url.query().unwrap_or_default().to_owned())
            .unwrap_or_default();
        path.push('?');
        path.push_str(&encoded);
        let finished = session
            .send(
                &Request::new(Method::PUT, &path, "*/*")
                    .push()
                    .body("application/octet-stream", bytes),
            )
            .await
            .map_err(refuse)?;
        if finished.response.status() != StatusCode::CREATED {
            return Err(write_refused(&session, finished).await);
        }
        Ok(digest)
    }
}

/// A refused write: the status and the registry's error code.
async fn write_refused(session: &Session<'_>, answer: Answer) -> Failure {
    let status = answer.response.status();
    let what = answer.what;
    if status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        return session
            .status_refusal(status, answer.response.headers(), &what)
            .into_failure();
    }
    let body = read_capped(answer.response, 64 * 1024)
        .await
        .unwrap_or_default();
    let code = error_code(&body);
    session
        .fail(
            Class::WriteRefused,
            format!(
                "{what}: {status}{}",
                code.as_deref()
                    .map(|code| format!(" {code}"))
                    .unwrap_or_default()
            ),
        )
        .status(Some(status.as_u16()))
        .code(code.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_gives_its_first_code() {
        assert_eq!(
            error_code(br#"{"errors":[{"code":"DIGEST_INVALID","message":"x"}]}"#).as_deref(),
            Some("DIGEST_INVALID")
        );
        assert_eq!(error_code(b"<html>"), None);
        assert_eq!(error_code(br#"{"errors":[]}"#), None);
    }
}
