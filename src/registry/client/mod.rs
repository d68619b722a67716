//! image-sync's own registry client: the digest of a tag by one manifest HEAD over a
//! pooled connection, tag lists and referrers indexes, with the registry's token or basic
//! auth, and no child process.
//!
//! Every request goes through a [`session::Session`] (one repository, one side, one
//! deadline, the credentials found for it): it picks the scheme, answers the 401 challenge,
//! counts upstream manifest requests and types failures, so that an operation (a file
//! here) only builds its path and reads the answer. Whatever the client does not understand
//! (an unexpected status, a TLS surprise, a 401 on a host it has no credentials for) a check
//! hands to crane with [`Checked::Delegate`]; a listing fails with it.
//!
//! - `core`: the [`Client`] shared by a run (HTTP clients, credentials, tokens, host facts);
//! - `session`: one operation's requests, the scheme probe and the challenge dance;
//! - `transport`: schemes, redirect rules, typed transport failures, capped bodies;
//! - `manifest`: the digest check; `manifests`: manifest HEAD/GET/PUT/DELETE and blob
//!   uploads by tag or digest (filtered indexes, prune, records); `tags`: tag listing; `referrers`: the referrers API.

mod core;
mod manifest;
mod manifests;
mod referrers;
mod session;
mod tags;
mod transport;

pub use self::core::{Client, NO_DIGEST_STREAK};
pub use manifest::{Checked, MAX_MANIFEST_BYTES, Want, parse_manifest};
pub use manifests::{Deleted, Fetched, Head, error_code};
pub use referrers::{Listed, MAX_REFERRERS, Referrer, parse_index};
pub use tags::{
    MAX_TAG_LIST_BYTES, MAX_TAG_PAGE_BYTES, MAX_TAG_PAGES, TagList, next_link, parse_tag_page,
};
