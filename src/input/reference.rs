//! Image references: parsing, validating and normalising the registry hosts, repository
//! paths, tags and digests a config may hold.
//!
//! Every value that later reaches a `crane` or `skopeo` command line passes through this
//! module first. The grammar is the distribution reference grammar (the one `docker`,
//! crane and skopeo share), with Docker Hub's normalisation: `nginx` and `docker.io/nginx`
//! both mean `docker.io/library/nginx`.

use std::fmt;

/// The registry host that short names (`nginx`, `team/app`) resolve to.
pub use crate::registry::docker_hub::HOST as DOCKER_HUB;

/// Longest repository name (`host/path`) the distribution grammar accepts.
pub const MAX_NAME_LEN: usize = 255;

/// Longest tag the distribution grammar accepts.
const MAX_TAG_LEN: usize = 128;

/// Why a reference was rejected. The texts complete a sentence that names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceError {
    /// The value is empty.
    Empty,
    /// The value starts with `-` and could be read as a command-line option.
    LeadingDash,
    /// The value holds whitespace or control characters.
    Whitespace,
    /// The value carries a URL scheme such as `https://`.
    Scheme,
    /// A source carries a tag; tags belong in the `tag` field.
    TagInSource(String),
    /// A source carries a digest; image-sync syncs tags.
    DigestInSource,
    /// A registry host or port is malformed.
    BadHost(String),
    /// A path component breaks the grammar.
    BadComponent(String),
    /// A path component has upper-case letters (it is the lowercase one that would be valid).
    Uppercase(String),
    /// The first component of a source has upper-case letters and no `.` or `:`: Docker
    /// reads it as a registry host, but it is far more likely a mistyped Docker Hub
    /// namespace (`MyTeam/app`), which Docker Hub refuses.
    UppercaseFirst {
        /// The component as written.
        component: String,
        /// The rest of the source (for the suggestion).
        rest: String,
    },
    /// The whole name is longer than 255 characters.
    TooLong(usize),
    /// A tag breaks the grammar.
    BadTag,
    /// A path holds a tag or digest separator.
    SeparatorInPath,
    /// The part after `@` of an image reference is not a `sha256:`/`sha512:` digest.
    BadDigest,
}

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "is empty"),
            Self::LeadingDash => write!(
                f,
                "starts with `-`, which a command line would read as an option"
            ),
            Self::Whitespace => write!(f, "contains whitespace or control characters"),
            Self::Scheme => write!(
                f,
                "contains a URL scheme; write `host[:port]/path` (list plain-HTTP registries in `settings.insecure_registries`)"
            ),
            Self::TagInSource(tag) => {
                write!(f, "contains a tag (`:{tag}`); move it to the `tag` field")
            }
            Self::DigestInSource => write!(
                f,
                "contains a digest (`@...`); image-sync syncs tags: name the tag in `tag`"
            ),
            Self::BadHost(host) => write!(
                f,
                "has an invalid registry host `{host}` (expected `host[:port]`, letters, digits, `-` and `.`)"
            ),
            Self::BadComponent(component) => write!(
                f,
                "has an invalid path component `{component}` (lowercase letters and digits, separated by `.`, `_`, `__` or dashes)"
            ),
            Self::Uppercase(component) => write!(
                f,
                "has an invalid path component `{component}`: repository names must be lowercase (`{}`)",
                component.to_ascii_lowercase()
            ),
            Self::UppercaseFirst { component, rest } => write!(
                f,
                "has upper-case letters in `{component}`: repository names must be lowercase (write `{}/{rest}`), and a registry host needs a `.` or a `:port` (`{}.example.com/{rest}`)",
                component.to_ascii_lowercase(),
                component.to_ascii_lowercase()
            ),
            Self::TooLong(len) => {
                write!(f, "is {len} characters long; the limit is {MAX_NAME_LEN}")
            }
            Self::BadTag => write!(
                f,
                "is not a valid tag (1 to {MAX_TAG_LEN} characters of `A-Za-z0-9_.-`, not starting with `.` or `-`)"
            ),
            Self::SeparatorInPath => write!(f, "contains `:` or `@`; a path has no tag or digest"),
            Self::BadDigest => write!(
                f,
                "has an invalid digest after `@` (expected `sha256:` and 64 lowercase hex digits, or `sha512:` and 128)"
            ),
        }
    }
}

impl std::error::Error for ReferenceError {}

/// A repository: a registry host plus a repository path, normalised. Cloning shares the
/// text: the jobs a tag rule selects, and their results, all name one repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository {
    host: std::sync::Arc<str>,
    path: std::sync::Arc<str>,
}

impl Repository {
    /// Parses an image source as written in the config (`nginx`, `ghcr.io/org/app`,
    /// `127.0.0.1:5001/team/app`). Tags and digests are rejected: they have fields of
    /// their own.
    pub fn parse_source(raw: &str) -> Result<Self, ReferenceError> {
        check_common(raw)?;
        if raw.contains('@') {
            return Err(ReferenceError::DigestInSource);
        }
        let (host, rest) = match raw.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => (first.to_ascii_lowercase(), rest),
            Some((first, rest)) if first.chars().any(|c| c.is_ascii_uppercase()) => {
                return Err(ReferenceError::UppercaseFirst {
                    component: shorten(first),
                    rest: shorten(rest),
                });
            }
            _ => (DOCKER_HUB.to_owned(), raw),
        };
        validate_host(&host)?;
        if let Some((_, tag)) = rest.rsplit_once(':') {
            return Err(ReferenceError::TagInSource(shorten(tag)));
        }
        validate_path(rest)?;
        let host = if crate::registry::docker_hub::is_alias(&host) {
            DOCKER_HUB.to_owned()
        } else {
            host
        };
        let path = if host == DOCKER_HUB && !rest.contains('/') {
            format!("library/{rest}")
        } else {
            rest.to_owned()
        };
        let full_len = host.len() + 1 + path.len();
        if full_len > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong(full_len));
        }
        Ok(Self {
            host: host.into(),
            path: path.into(),
        })
    }

    /// Builds a repository from parts that were each validated already.
    pub fn new(host: &str, path: &str) -> Self {
        Self {
            host: host.into(),
            path: path.into(),
        }
    }

    /// The registry host, with its port if it has one.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The repository path inside the registry (`library/nginx`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `host/path:tag`.
    pub fn with_tag(&self, tag: &Tag) -> String {
        format!("{self}:{tag}")
    }

    /// `host/path@digest`.
    pub fn with_digest(&self, digest: &Digest) -> String {
        format!("{self}@{digest}")
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.path)
    }
}

/// A validated tag. Shared, not copied, when cloned: an image's job and its result both
/// keep it until the report.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(std::sync::Arc<str>);

impl Tag {
    /// Validates a tag against `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    pub fn parse(raw: &str) -> Result<Self, ReferenceError> {
        check_common(raw)?;
        let mut chars = raw.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !first_ok || !rest_ok || raw.len() > MAX_TAG_LEN {
            return Err(ReferenceError::BadTag);
        }
        Ok(Self(raw.into()))
    }

    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag text, shared.
    pub fn shared(&self) -> std::sync::Arc<str> {
        std::sync::Arc::clone(&self.0)
    }
}

impl serde::Serialize for Tag {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A content digest (`sha256:<64 hex>` or `sha512:<128 hex>`), as a registry reports it.
/// Kept as its raw bytes, in line for sha256: every image's result keeps its digests until
/// the report, so a digest costs 40 bytes and no allocation (its text took 16 bytes plus
/// 96 on the heap, scattered among each request's short-lived buffers). Ordered, hashed
/// and compared as its text is; serialised as its text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(DigestBytes);

/// The hash of a [`Digest`]; the variant order is the text's (`sha256` < `sha512`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum DigestBytes {
    Sha256([u8; 32]),
    /// Rare: boxed, so that a sha256 digest is not sized for it.
    Sha512(Box<[u8; 64]>),
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text())
    }
}

impl Digest {
    /// Parses a digest printed by a tool; `None` when the text is not exactly one digest
    /// (lower-case hex only, as the OCI spec writes it).
    pub fn parse(raw: &str) -> Option<Self> {
        let (algorithm, hex) = raw.trim().split_once(':')?;
        match algorithm {
            "sha256" => Some(Self(DigestBytes::Sha256(decode_hex(hex)?))),
            "sha512" => Some(Self(DigestBytes::Sha512(Box::new(decode_hex(hex)?)))),
            _ => None,
        }
    }

    /// The sha256 digest of some bytes (a manifest read with `skopeo inspect --raw`).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        use sha2::{Digest as _, Sha256};
        Self(DigestBytes::Sha256(Sha256::digest(bytes).into()))
    }

    /// The digest text (`sha256:...`), built on the stack.
    pub fn text(&self) -> DigestText {
        let (algorithm, bytes): (&[u8], &[u8]) = match &self.0 {
            DigestBytes::Sha256(bytes) => (b"sha256:", bytes),
            DigestBytes::Sha512(bytes) => (b"sha512:", &bytes[..]),
        };
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = DigestText {
            buf: [0; DigestText::CAPACITY],
            len: algorithm.len() + 2 * bytes.len(),
        };
        text.buf[..algorithm.len()].copy_from_slice(algorithm);
        for (i, byte) in bytes.iter().enumerate() {
            let at = algorithm.len() + 2 * i;
            text.buf[at] = HEX[usize::from(byte >> 4)];
            text.buf[at + 1] = HEX[usize::from(byte & 0x0f)];
        }
        text
    }
}

/// `N` bytes from exactly `2 * N` lower-case hex digits.
fn decode_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            _ => None,
        }
    }
    let hex = hex.as_bytes();
    if hex.len() != 2 * N {
        return None;
    }
    let mut bytes = [0; N];
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(bytes)
}

/// A digest's text on the stack (see [`Digest::text`]); derefs to `str`.
pub struct DigestText {
    buf: [u8; Self::CAPACITY],
    len: usize,
}

impl DigestText {
    /// `sha512:` and 128 hex digits.
    const CAPACITY: usize = 7 + 128;
}

impl std::ops::Deref for DigestText {
    type Target = str;

    fn deref(&self) -> &str {
        // Only ASCII is ever written into `buf`.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Digest").field(&&*self.text()).finish()
    }
}

/// A whole image reference as a pod spec writes it (`nginx`, `org/app:1`,
/// `host:5000/app:v1@sha256:...`), normalised the way Docker and containerd resolve it: a
/// short name is Docker Hub's (`docker.io/library/nginx`), a missing tag is `latest`, a host
/// keeps its port, and a reference with a digest is pulled by that digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    repository: Repository,
    tag: Option<Tag>,
    digest: Option<Digest>,
}

/// The tag Docker and containerd pull when a reference names none.
pub const DEFAULT_TAG: &str = "latest";

impl ImageRef {
    /// Parses `NAME[:TAG][@DIGEST]`, with the same grammar and checks as a config source.
    pub fn parse(raw: &str) -> Result<Self, ReferenceError> {
        check_common(raw)?;
        let (name_tag, digest) = match raw.split_once('@') {
            Some((name_tag, digest)) => (
                name_tag,
                Some(Digest::parse(digest).ok_or(ReferenceError::BadDigest)?),
            ),
            None => (raw, None),
        };
        // A `:` after the last `/` starts the tag; one before it belongs to a host's port.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(colon) => {
                let colon = last_slash + colon;
                (
                    &name_tag[..colon],
                    Some(Tag::parse(&name_tag[colon + 1..])?),
                )
            }
            None => (name_tag, None),
        };
        let repository = Repository::parse_source(name)?;
        Ok(Self {
            repository,
            tag,
            digest,
        })
    }

    /// The repository, normalised.
    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// The tag as written, if any (`NAME:TAG@DIGEST` keeps it here though it prints without).
    pub fn written_tag(&self) -> Option<&Tag> {
        self.tag.as_ref()
    }

    /// The tag a node resolves when it pulls by tag: the written one, else `latest`. `None`
    /// when the reference has a digest (the node pulls by digest, the tag plays no part).
    pub fn pulled_tag(&self) -> Option<Tag> {
        if self.digest.is_some() {
            return None;
        }
        Some(self.tag.clone().unwrap_or_else(|| Tag(DEFAULT_TAG.into())))
    }

    /// The digest, if the reference has one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }
}

/// `host/path@digest` when there is a digest, else `host/path:tag` (`latest` when none).
impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => write!(f, "{}@{digest}", self.repository),
            (None, Some(tag)) => write!(f, "{}:{tag}", self.repository),
            (None, None) => write!(f, "{}:{DEFAULT_TAG}", self.repository),
        }
    }
}

/// Validates a registry host with an optional port (`cache:5000`, `[::1]:5000`), as used in
/// `cache_registry` and `settings.insecure_registries`. Returns it lowercased.
pub fn parse_host(raw: &str) -> Result<String, ReferenceError> {
    check_common(raw)?;
    if raw.contains('/') {
        return Err(ReferenceError::BadHost(shorten(raw)));
    }
    let host = raw.to_ascii_lowercase();
    validate_host(&host)?;
    Ok(host)
}

/// Validates a repository path without a host (`cache_as`, a cache path prefix).
pub fn parse_path(raw: &str) -> Result<String, ReferenceError> {
    check_common(raw)?;
    if raw.contains(':') || raw.contains('@') {
        return Err(ReferenceError::SeparatorInPath);
    }
    validate_path(raw)?;
    if raw.len() > MAX_NAME_LEN {
        return Err(ReferenceError::TooLong(raw.len()));
    }
    Ok(raw.to_owned())
}

/// Splits `host[:port]` into its host and port parts (IPv6 literals keep their brackets).
pub fn split_port(host: &str) -> (&str, Option<&str>) {
    if let Some(end) = host.strip_prefix('[').and_then(|rest| rest.find(']')) {
        let (name, after) = host.split_at(end + 2);
        return (name, after.strip_prefix(':'));
    }
    match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    }
}

/// A value as it may appear in a message: escaped (no control or bidi characters reach a
/// terminal or log) and cut to 80 characters (a hostile 100 kB value is not echoed).
pub fn shorten(value: &str) -> String {
    const LIMIT: usize = 80;
    let mut escaped = String::new();
    for c in value.chars() {
        if c.is_ascii_graphic() || c == ' ' || (c.is_alphanumeric() && !c.is_ascii()) {
            escaped.push(c);
        } else if c.is_ascii() {
            escaped.extend(c.escape_debug());
        } else {
            escaped.extend(c.escape_unicode());
        }
        if escaped.chars().count() > LIMIT {
            return format!("{}...", escaped.chars().take(LIMIT).collect::<String>());
        }
    }
    escaped
}

fn check_common(raw: &str) -> Result<(), ReferenceError> {
    if raw.is_empty() {
        return Err(ReferenceError::Empty);
    }
    if raw.starts_with('-') {
        return Err(ReferenceError::LeadingDash);
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ReferenceError::Whitespace);
    }
    if raw.contains("://") {
        return Err(ReferenceError::Scheme);
    }
    Ok(())
}

/// The first component names a registry when it has a `.` or `:` (or is an IPv6 literal),
/// or is `localhost`. Docker also takes a first component with upper-case letters for a
/// host; image-sync refuses it instead ([`ReferenceError::UppercaseFirst`]): a single-label
/// upper-case host is almost always a mistyped namespace, and lowercasing it silently
/// changed the registry (`MyTeam/app` became host `myteam`, and did not round-trip).
fn looks_like_host(first: &str) -> bool {
    first.contains(['.', ':', '[']) || first == "localhost"
}

fn validate_host(host: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::BadHost(shorten(host));
    let (name, port) = split_port(host);
    // Nothing may follow `]` but `:port` (split_port would drop it silently).
    if name.len() + port.map_or(0, |p| p.len() + 1) != host.len() {
        return Err(bad());
    }
    if let Some(port) = port {
        let numeric =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !numeric || port.parse::<u32>().map_or(true, |p| p == 0 || p > 65_535) {
            return Err(bad());
        }
    }
    if let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return literal
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| bad());
    }
    let labels_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if labels_ok { Ok(()) } else { Err(bad()) }
}

fn validate_path(path: &str) -> Result<(), ReferenceError> {
    path.split('/').try_for_each(|component| {
        if valid_component(component) {
            Ok(())
        } else if valid_component(&component.to_ascii_lowercase()) {
            Err(ReferenceError::Uppercase(shorten(component)))
        } else {
            Err(ReferenceError::BadComponent(shorten(component)))
        }
    })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let allowed = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !allowed {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(raw: &str) -> String {
        Repository::parse_source(raw)
            .map(|r| r.to_string())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn docker_hub_short_names_normalise_to_library() {
        assert_eq!(source("nginx"), "docker.io/library/nginx");
        assert_eq!(source("docker.io/nginx"), "docker.io/library/nginx");
        assert_eq!(source("index.docker.io/nginx"), "docker.io/library/nginx");
        assert_eq!(
            source("akeyless/k8s-webhook-server"),
            "docker.io/akeyless/k8s-webhook-server"
        );
    }

    #[test]
    fn hosts_and_paths_split_like_docker() {
        let zot = Repository::parse_source("ghcr.io/project-zot/zot-linux-amd64").expect("valid");
        assert_eq!(
            (zot.host(), zot.path()),
            ("ghcr.io", "project-zot/zot-linux-amd64")
        );
        let local = Repository::parse_source("127.0.0.1:5001/team/app").expect("valid");
        assert_eq!((local.host(), local.path()), ("127.0.0.1:5001", "team/app"));
        let localhost = Repository::parse_source("localhost/app").expect("valid");
        assert_eq!(localhost.host(), "localhost");
        let v6 = Repository::parse_source("[::1]:5000/app").expect("valid");
        assert_eq!((v6.host(), v6.path()), ("[::1]:5000", "app"));
    }

    #[test]
    fn sources_with_tags_digests_or_options_are_rejected() {
        assert_eq!(
            source("nginx:1.27"),
            "error: contains a tag (`:1.27`); move it to the `tag` field"
        );
        assert!(source("127.0.0.1:5000/app:v1").contains("contains a tag"));
        assert!(source("nginx@sha256:abc").contains("digest"));
        assert!(source("--insecure").contains("starts with `-`"));
        assert!(source("https://ghcr.io/a").contains("scheme"));
        assert!(source("ng inx").contains("whitespace"));
        assert!(source("nginx\n--x").contains("whitespace"));
        assert_eq!(
            source("Docker.io/Nginx"),
            "error: has an invalid path component `Nginx`: repository names must be lowercase (`nginx`)"
        );
        assert!(source("library/ngINX").contains("must be lowercase (`nginx`)"));
        assert!(source("library/ng$INX").contains("invalid path component `ng$INX` ("));
        assert!(source("a..b/c").contains("invalid registry host"));
        assert!(source("host:99999/c").contains("invalid registry host"));
        assert!(source("host:/c").contains("invalid registry host"));
        assert!(source("").contains("is empty"));
        assert!(source("a//b").contains("invalid path component ``"));
        assert!(source(&format!("ghcr.io/{}", "a".repeat(300))).contains("limit is 255"));
    }

    #[test]
    fn an_upper_case_first_component_is_neither_a_host_nor_a_path() {
        // Docker would take `MyTeam` for a registry host; it used to become host `myteam`,
        // which printed as `myteam/app` and re-parsed as `docker.io/myteam/app`.
        assert_eq!(
            source("MyTeam/app"),
            "error: has upper-case letters in `MyTeam`: repository names must be lowercase (write `myteam/app`), and a registry host needs a `.` or a `:port` (`myteam.example.com/app`)"
        );
        assert!(source("Z0/0").contains("must be lowercase"));
        assert!(source("team/App").contains("must be lowercase (`app`)"));
        // With a `.` or a port it is a host, and hosts are case-insensitive.
        assert_eq!(source("GHCR.io/team/app"), "ghcr.io/team/app");
        assert_eq!(source("MyHost:5000/app"), "myhost:5000/app");
        // A single upper-case name has no host part: it is a (bad) Docker Hub path.
        assert!(source("Nginx").contains("must be lowercase (`nginx`)"));
    }

    #[test]
    fn path_components_follow_the_grammar() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "a1-2.3_4"] {
            assert!(valid_component(ok), "{ok}");
        }
        for bad in [
            "", "-a", "a-", "a___b", "a._b", "A", "a b", "a..b", ".a", "a$",
        ] {
            assert!(!valid_component(bad), "{bad}");
        }
    }

    #[test]
    fn messages_escape_and_cut_hostile_values() {
        assert_eq!(shorten("a\nb"), "a\\nb");
        assert_eq!(shorten("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(shorten("caf\u{e9}"), "caf\u{e9}");
        assert_eq!(shorten(&"a".repeat(1000)).len(), 83);
    }

    #[test]
    fn tags_follow_the_grammar() {
        for ok in ["latest", "1.27-alpine", "_x", "v2.1.2", &"a".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a:b",
            "a/b",
            "a b",
            "$(id)",
            &"a".repeat(129),
        ] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_are_parsed_strictly() {
        let hex = "a".repeat(64);
        assert_eq!(
            Digest::parse(&format!("sha256:{hex}\n")).map(|d| d.to_string()),
            Some(format!("sha256:{hex}"))
        );
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(Digest::parse("sha256:abc").is_none());
        assert!(Digest::parse("md5:abc").is_none());
        assert!(Digest::parse("Error: boom").is_none());
        assert_eq!(
            &*Digest::of_bytes(b"").text(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn image(raw: &str) -> String {
        ImageRef::parse(raw)
            .map(|r| r.to_string())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn image_references_normalise_like_docker_and_containerd() {
        let hex = "b".repeat(64);
        for (raw, normal) in [
            ("nginx", "docker.io/library/nginx:latest".to_owned()),
            ("nginx:1.27", "docker.io/library/nginx:1.27".to_owned()),
            ("org/app:1", "docker.io/org/app:1".to_owned()),
            (
                "docker.io/nginx",
                "docker.io/library/nginx:latest".to_owned(),
            ),
            (
                "index.docker.io/org/app:2",
                "docker.io/org/app:2".to_owned(),
            ),
            (
                "registry-1.docker.io/library/redis:7",
                "docker.io/library/redis:7".to_owned(),
            ),
            ("localhost:5000/app", "localhost:5000/app:latest".to_owned()),
            (
                "127.0.0.1:5000/team/app:v1",
                "127.0.0.1:5000/team/app:v1".to_owned(),
            ),
            ("[::1]:5000/app:v1", "[::1]:5000/app:v1".to_owned()),
            ("GHCR.io/team/app:V1", "ghcr.io/team/app:V1".to_owned()),
            (
                &format!("nginx@sha256:{hex}"),
                format!("docker.io/library/nginx@sha256:{hex}"),
            ),
            (
                &format!("quay.io/a/b:1.2@sha256:{hex}"),
                format!("quay.io/a/b@sha256:{hex}"),
            ),
        ] {
            assert_eq!(image(raw), normal, "{raw}");
            // Normalising is idempotent: the printed form reads back to itself.
            assert_eq!(image(&normal), normal, "{normal}");
        }
        let pinned = ImageRef::parse(&format!("app:1.2@sha256:{hex}")).expect("valid");
        assert_eq!(pinned.written_tag().map(Tag::as_str), Some("1.2"));
        assert_eq!(pinned.pulled_tag(), None);
        assert_eq!(
            ImageRef::parse("app")
                .expect("valid")
                .pulled_tag()
                .map(|t| t.as_str().to_owned()),
            Some("latest".to_owned())
        );
    }

    #[test]
    fn invalid_image_references_say_why() {
        assert!(image("").contains("is empty"));
        assert!(image("nginx@sha256:abc").contains("invalid digest"));
        assert!(image("nginx@latest").contains("invalid digest"));
        assert!(image("nginx:").contains("is empty"));
        assert!(image("nginx:a$b").contains("not a valid tag"));
        assert!(
            image("nginx:a/b").contains("invalid path component")
                || image("nginx:a/b").contains("registry host")
        );
        assert!(image("{{ .Values.image }}").contains("whitespace"));
        assert!(image("${IMAGE}").contains("invalid path component"));
        assert!(image("Nginx:1").contains("lowercase"));
        assert!(image("-x").contains("starts with `-`"));
        assert!(image("https://ghcr.io/a:1").contains("scheme"));
    }

    #[test]
    fn hosts_and_paths_for_the_cache_are_validated() {
        assert_eq!(
            parse_host("Cache.Local:5000").as_deref(),
            Ok("cache.local:5000")
        );
        assert!(parse_host("cache/x").is_err());
        assert!(parse_host("http://cache").is_err());
        assert!(parse_host("-cache").is_err());
        assert!(parse_host("[::1]x0").is_err());
        assert!(parse_host("[::1]0").is_err());
        assert_eq!(parse_host("[::1]:5000").as_deref(), Ok("[::1]:5000"));
        assert_eq!(
            parse_path("project-zot/zot").as_deref(),
            Ok("project-zot/zot")
        );
        assert!(parse_path("x:1").is_err());
        assert!(parse_path("/x").is_err());
        assert_eq!(split_port("cache:5000"), ("cache", Some("5000")));
        assert_eq!(split_port("[::1]:5000"), ("[::1]", Some("5000")));
        assert_eq!(split_port("[::1]"), ("[::1]", None));
        assert_eq!(split_port("cache"), ("cache", None));
    }
}
