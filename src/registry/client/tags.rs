//! Tag listing: `GET /v2/<path>/tags/list?n=<page>`, then every `Link: <...>; rel="next"`
//! page, through the same session (scheme, auth, tokens, deadline) as a manifest check (a
//! pull-scoped token on Docker Hub; a listing is not a pull).
//!
//! A hostile or broken registry cannot hold the run: a `next` link on another host (or
//! scheme or port), to another path, or to a page already read ends the listing with a
//! failure that says so, and
//! every page, all pages together and the number of pages are capped (each named in its
//! failure).

use std::collections::HashSet;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

use super::core::Client;
use super::session::Request;
use super::transport::{BodyError, read_capped};
use crate::input::reference::Repository;
use crate::registry::failure::{Class, Failure, Side};

/// Upper bound on the pages of one tag listing: a registry whose `Link` never ends must
/// not hold the run.
pub const MAX_TAG_PAGES: u32 = 1000;

/// Upper bound on one page's body (a page of 1,000 tags is about 30 KiB; a registry that
/// ignores `n` and sends 100,000 tags at once, about 3 MiB).
pub const MAX_TAG_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// Upper bound on every page of one listing together.
pub const MAX_TAG_LIST_BYTES: usize = 32 * 1024 * 1024;

/// One tag listing: the tags (or why not), and the HTTP requests it took (token fetches
/// excluded), which the report counts.
#[derive(Debug)]
pub struct TagList {
    /// Every tag of every page, in the registry's order.
    pub tags: Result<Vec<String>, Failure>,
    /// `tags/list` requests the registry answered, 401 challenges included.
    pub requests: u32,
}

impl Client {
    /// Lists the tags of `repository` upstream, `page` tags per request, within `budget`.
    pub async fn list_tags(&self, repository: &Repository, page: u32, budget: Duration) -> TagList {
        self.list_tags_on(repository, Side::Upstream, page, budget)
            .await
    }

    /// Lists the tags of `repository` on `side` (the cache, for prune and its records).
    pub async fn list_tags_on(
        &self,
        repository: &Repository,
        side: Side,
        page: u32,
        budget: Duration,
    ) -> TagList {
        let session = match self.session(repository, side, budget).await {
            Ok(session) => session,
            Err(refusal) => {
                return TagList {
                    tags: Err(refusal.into_failure()),
                    requests: 0,
                };
            }
        };
        let mut next = format!("/v2/{}/tags/list?n={page}", repository.path());
        let mut read = HashSet::new();
        let mut tags = Vec::new();
        let mut bytes = 0;
        let outcome = loop {
            read.insert(next.clone());
            let request = Request::new(Method::GET, &next, "application/json");
            let answer = match session.send(&request).await {
                Ok(answer) => answer,
                Err(refusal) => break Err(refusal.into_failure()),
            };
            let what = answer.what.clone();
            let status = answer.response.status();
            if status != StatusCode::OK {
                break Err(session
                    .status_refusal(status, answer.response.headers(), &what)
                    .into_failure());
            }
            let link = next_link(answer.response.headers(), &answer.url);
            let body = match read_capped(answer.response, MAX_TAG_PAGE_BYTES).await {
                Ok(body) => body,
                Err(BodyError::TooLarge) => {
                    break Err(session.fail(
                        Class::Malformed,
                        format!(
                            "{what}: a tag-list page larger than {} MiB: not read",
                            MAX_TAG_PAGE_BYTES / (1024 * 1024)
                        ),
                    ));
                }
                Err(BodyError::Broken(broken)) => {
                    break Err(session.broken(&broken, &what).into_failure());
                }
            };
            bytes += body.len();
            if bytes > MAX_TAG_LIST_BYTES {
                break Err(session.fail(
                    Class::Malformed,
                    format!(
                        "{what}: the tag list is larger than {} MiB in all: not read further",
                        MAX_TAG_LIST_BYTES / (1024 * 1024)
                    ),
                ));
            }
            match parse_tag_page(&body) {
                Ok(page_tags) => tags.extend(page_tags),
                Err(why) => {
                    break Err(session.fail(Class::Malformed, format!("{what}: {why}")));
                }
            }
            let Some(link) = link else {
                break Ok(std::mem::take(&mut tags));
            };
            let same_origin = link.scheme() == answer.url.scheme()
                && link.host_str() == answer.url.host_str()
                && link.port_or_known_default() == answer.url.port_or_known_default();
            if !same_origin {
                break Err(session.fail(
                    Class::Denied,
                    format!(
                        "{what}: the next page `{}` is on another host; not followed",
                        crate::input::reference::shorten(link.as_str())
                    ),
                ));
            }
            if link.path() != answer.url.path() {
                break Err(session.fail(
                    Class::Malformed,
                    format!(
                        "{what}: the next page `{}` is not this repository's tag list; not followed",
                        crate::input::reference::shorten(link.as_str())
                    ),
                ));
            }
            let target = match link.query() {
                Some(query) => format!("{}?{query}", link.path()),
                None => link.path().to_owned(),
            };
            if read.contains(&target) {
                break Err(session.fail(
                    Class::Malformed,
                    format!(
                        "{what}: the next page `{}` was read already (the registry's pagination loops); not followed",
                        crate::input::reference::shorten(&target)
                    ),
                ));
            }
            if read.len() >= MAX_TAG_PAGES as usize {
                break Err(session.fail(
                    Class::Malformed,
                    format!(
                        "{what}: more than {MAX_TAG_PAGES} pages of tags; not followed further"
                    ),
                ));
            }
            next = target;
        };
        TagList {
            tags: outcome,
            requests: session.answered(),
        }
    }
}

/// The tags of one `tags/list` page (`{"name": ..., "tags": [...]}`; `null` or no `tags`
/// is none), or why the body is not one.
pub fn parse_tag_page(body: &[u8]) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Page {
        #[serde(default)]
        tags: Option<Vec<String>>,
    }
    serde_json::from_slice::<Page>(body)
        .map(|page| page.tags.unwrap_or_default())
        .map_err(|err| format!("the tag list is not JSON: {err}"))
}

/// The `rel="next"` target of a `Link` header, resolved against the page's URL.
pub fn next_link(headers: &HeaderMap, base: &reqwest::Url) -> Option<reqwest::Url> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            let is_next = params.split(';').any(|param| {
                let param = param.trim();
                param == "rel=next"
                    || param.split_whitespace().collect::<String>() == "rel=\"next\""
            });
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            is_next.then(|| base.join(target).ok()).flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        let base = reqwest::Url::parse("http://127.0.0.1:5000/v2/a/tags/list?n=10").expect("url");
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::LINK,
            "</v2/a/tags/list?last=t9&n=10>; rel=\"next\""
                .parse()
                .expect("header"),
        );
        assert_eq!(
            next_link(&headers, &base).map(|url| url.to_string()),
            Some("http://127.0.0.1:5000/v2/a/tags/list?last=t9&n=10".to_owned())
        );
        headers.insert(
            reqwest::header::LINK,
            "<http://x/other>; rel=\"prev\"".parse().expect("header"),
        );
        assert_eq!(next_link(&headers, &base), None);
        assert_eq!(next_link(&HeaderMap::new(), &base), None);
    }

    #[test]
    fn a_page_is_a_json_object_with_tags() {
        assert_eq!(
            parse_tag_page(br#"{"name":"a","tags":["1","2"]}"#),
            Ok(vec!["1".to_owned(), "2".to_owned()])
        );
        assert_eq!(parse_tag_page(br#"{"name":"a","tags":null}"#), Ok(vec![]));
        assert!(
            parse_tag_page(br#"{"name":"a","tags":["1""#).is_err(),
            "truncated"
        );
        assert!(parse_tag_page(br#"{"tags":[1e999]}"#).is_err());
    }
}
