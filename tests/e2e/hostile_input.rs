//! Hostile input: property-based fuzzing of the config loader and the reference parser
//! (never a panic, always quick, and whatever they accept is safe to put on a command
//! line), plus hostile files through the real binary (huge, bombs, not UTF-8, option
//! injection) that must all end in exit 2 with a clear message.
//!
//! "Safe" for an accepted value: not empty, no leading `-`, only ASCII from the reference
//! grammar's alphabet (so no whitespace, control character or shell metacharacter), and it
//! round-trips: parsing its `Display` gives it back.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use image_sync::input::config::{self, MAX_CONFIG_BYTES};
use image_sync::input::plan::{self, Plan};
use image_sync::input::reference::{self, Repository, Tag};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};

use crate::support::runner::{ImageSync, Outcome, outcome};

/// Generous for one parse of at most ~100k characters, even in a debug build on a busy CI
/// machine; an accidental quadratic (or worse) blows through it.
const CASE_BUDGET: Duration = Duration::from_secs(2);

/// Characters a shell (or a YAML/log reader) gives meaning to. None is in the grammar.
const SHELL_META: &[char] = &[
    ';', '|', '&', '$', '(', ')', '`', '<', '>', '\\', '\'', '"', '*', '?', '!', '{', '}', '#',
    '~', '%', '^', '=', ',', '+',
];

/// Fragments hostile values are built from: pieces of valid references mixed with
/// options, whitespace, control characters, shell syntax and odd Unicode.
const FRAGMENTS: &[&str] = &[
    "a",
    "nginx",
    "library",
    "team",
    "app",
    "v1",
    "1.27-alpine",
    "latest",
    "_x",
    "docker.io",
    "ghcr.io",
    "index.docker.io",
    "localhost",
    "127.0.0.1",
    "[::1]",
    "[::1]x",
    "cache",
    "5000",
    ":",
    "/",
    "//",
    "@",
    "sha256:",
    ".",
    "..",
    "_",
    "__",
    "-",
    "--",
    "--insecure",
    "-v",
    "Z",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\0",
    "\x1b",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{2028}",
    "\u{202e}",
    "\u{feff}",
    "\u{200b}",
    "é",
    "ǅ",
    "ﬃ",
    ";",
    "|",
    "&",
    "$",
    "(",
    ")",
    "`",
    "<",
    ">",
    "$(id)",
    "`id`",
    "${IFS}",
    "|| true",
    "; rm -rf /",
    "'",
    "\"",
    "\\",
    "*",
    "?",
    "#",
    "~",
    "%00",
    "://",
    "https://",
    "{",
    "}",
    "[",
    "]",
    "!",
    "=",
    "%",
];

/// A hostile string: fragments glued together, arbitrary Unicode, or a very long repetition
/// (up to 100k characters) with something hostile around it.
fn hostile_string() -> impl Strategy<Value = String> {
    let glued = prop::collection::vec(prop::sample::select(FRAGMENTS), 0..12)
        .prop_map(|pieces| pieces.concat());
    let long = (
        prop::sample::select(FRAGMENTS),
        prop::sample::select(&["a", "a/", "ab.", "-", " ", "\n", "é", "9"][..]),
        1..100_000_usize,
        prop::sample::select(FRAGMENTS),
    )
        .prop_map(|(prefix, unit, count, suffix)| {
            let mut value = String::from(prefix);
            while value.chars().count() < count {
                value.push_str(unit);
            }
            value.push_str(suffix);
            value
        });
    let near_valid = (
        "[a-z0-9]{1,8}(\\.[a-z]{2,4})?(:[0-9]{1,5})?/[a-z0-9]{1,6}([._-][a-z0-9]{1,4})?(/[a-z0-9]{1,6}){0,2}",
        prop::sample::select(FRAGMENTS),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(valid, insert, at)| {
            let positions: Vec<usize> = valid
                .char_indices()
                .map(|(i, _)| i)
                .chain([valid.len()])
                .collect();
            let at = positions[at.index(positions.len())];
            format!("{}{insert}{}", &valid[..at], &valid[at..])
        });
    prop_oneof![
        4 => glued,
        2 => any::<String>(),
        2 => near_valid,
        1 => "[A-Za-z0-9._-]{1,140}",
        1 => long,
    ]
}

/// Runs `f` and asserts it finished within [`CASE_BUDGET`].
fn timed<T>(what: &str, input_len: usize, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    let elapsed = started.elapsed();
    assert!(
        elapsed < CASE_BUDGET,
        "{what} took {elapsed:?} on {input_len} bytes"
    );
    value
}

/// Panics unless `value` is safe to put on a command line, and made only of `alphabet`.
fn assert_safe(what: &str, value: &str, alphabet: fn(char) -> bool) {
    assert!(!value.is_empty(), "{what} accepted an empty value");
    assert!(!value.starts_with('-'), "{what} accepted `{value:?}`");
    for c in value.chars() {
        assert!(
            !c.is_whitespace() && !c.is_control() && !SHELL_META.contains(&c),
            "{what} accepted {value:?} with {c:?}"
        );
        assert!(
            alphabet(c),
            "{what} accepted {value:?} with {c:?}, outside its grammar"
        );
    }
}

fn host_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':' | '[' | ']')
}

fn path_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/')
}

fn tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn repository_char(c: char) -> bool {
    host_char(c) || path_char(c)
}

/// Hosts as the distribution grammar has them: DNS labels or a bracketed IPv6 literal,
/// then an optional port, and nothing else.
fn assert_host_grammar(host: &str) {
    let (name, port) = reference::split_port(host);
    if let Some(port) = port {
        assert!(
            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
            "host {host:?} has port {port:?}"
        );
    }
    let rebuilt = match port {
        Some(port) => format!("{name}:{port}"),
        None => name.to_owned(),
    };
    assert_eq!(rebuilt, host, "host {host:?} has text outside host[:port]");
    if let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        assert!(
            literal.parse::<std::net::Ipv6Addr>().is_ok(),
            "host {host:?}"
        );
    } else {
        assert!(!name.contains(['[', ']']), "host {host:?}");
    }
}

fn check_repository(what: &str, repository: &Repository) {
    let shown = repository.to_string();
    assert_safe(what, &shown, repository_char);
    assert_safe(what, repository.host(), host_char);
    assert_safe(what, repository.path(), path_char);
    assert_host_grammar(repository.host());
    assert!(shown.len() <= 255, "{what} `{shown}` is longer than 255");
}

fn check_tag(what: &str, tag: &Tag) {
    assert_safe(what, tag.as_str(), tag_char);
    assert_eq!(
        Tag::parse(&tag.to_string()).as_ref(),
        Ok(tag),
        "{what} round-trip"
    );
}

/// Everything an accepted plan will put on a command line.
fn check_plan(plan: &Plan) {
    for host in std::iter::once(&plan.cache_host).chain(&plan.settings.insecure_registries) {
        assert_safe("cache or insecure registry host", host, host_char);
        assert_host_grammar(host);
    }
    for job in &plan.jobs {
        check_repository("source", &job.source);
        assert_eq!(
            Repository::parse_source(&job.source.to_string()).as_ref(),
            Ok(&job.source),
            "source round-trip"
        );
        check_tag("tag", &job.tag);
        check_repository("target", &job.target);
        assert_eq!(
            reference::parse_host(job.target.host()).as_deref(),
            Ok(job.target.host()),
            "target host round-trip"
        );
        assert_eq!(
            reference::parse_path(job.target.path()).as_deref(),
            Ok(job.target.path()),
            "target path round-trip (a cache path is a valid repository path)"
        );
    }
}

/// A YAML scalar holding exactly `value` (double-quoted, every non-printable escaped).
fn yaml_quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            // Line and paragraph separators are line breaks to YAML (folded), and a BOM is
            // refused inside a document: escape them like control characters.
            c if u32::from(c) <= 0xFFFF
                && !c.is_control()
                && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') =>
            {
                out.push(c)
            }
            c if u32::from(c) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

/// How a generated value is written into the YAML.
#[derive(Debug, Clone, Copy)]
enum Style {
    /// Double-quoted with escapes: the parsed value is exactly the generated one.
    Quoted,
    /// As is, unquoted: YAML may read it as another type, or fail.
    Plain,
    /// A literal block (`|`), so that newlines stay newlines.
    Block,
}

fn render(key: &str, value: &str, style: Style, indent: &str) -> String {
    match style {
        Style::Quoted => format!("{indent}{key}: {}\n", yaml_quoted(value)),
        Style::Plain => format!("{indent}{key}: {value}\n"),
        Style::Block => {
            let mut out = format!("{indent}{key}: |\n");
            for line in value.split('\n') {
                out.push_str(&format!("{indent}  {line}\n"));
            }
            out
        }
    }
}

/// A generated config: values from [`hostile_string`] in every field.
#[derive(Debug, Clone)]
struct GeneratedConfig {
    yaml: String,
    /// (source, tag, cache_as) of every image written double-quoted, to check that the
    /// hostile value reached the validators unchanged.
    quoted_images: Vec<(usize, String, String)>,
}

fn style() -> impl Strategy<Value = Style> {
    prop_oneof![6 => Just(Style::Quoted), 1 => Just(Style::Plain), 1 => Just(Style::Block)]
}

/// A value that is usually valid, sometimes hostile: so that plans get accepted often
/// enough to check what they hold.
fn field(valid: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![3 => valid.prop_map(|v: String| v), 2 => hostile_string()]
}

fn generated_config() -> impl Strategy<Value = GeneratedConfig> {
    let image = (
        field(
            "([a-z0-9]{1,6}\\.[a-z]{2,3}(:[0-9]{2,5})?/)?[a-z0-9]{1,8}([._-][a-z0-9]{1,3})?(/[a-z0-9]{1,8}){0,2}",
        ),
        field("[A-Za-z0-9_][A-Za-z0-9._-]{0,20}"),
        prop::option::of(field("[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}")),
        style(),
    );
    (
        field("[a-z0-9]{1,10}(\\.[a-z]{2,4})?(:[0-9]{2,5})?(/[a-z0-9]{1,8})?"),
        style(),
        prop::collection::vec(image, 1..4),
        prop::option::of((
            prop::option::of(0..100_u64),
            prop::option::of(0..400_u64),
            prop::option::of(0..400_u64),
            prop::collection::vec(field("[a-z0-9.]{1,10}(:[0-9]{2,5})?"), 0..3),
            // An entry must name a registry of the config: list the cache's host too, so
            // that plans with insecure registries are accepted often enough to be checked.
            any::<bool>(),
        )),
    )
        .prop_map(|(cache, cache_style, images, settings)| {
            let mut yaml = render("cache_registry", &cache, cache_style, "");
            yaml.push_str("images:\n");
            let mut quoted_images = Vec::new();
            for (index, (source, tag, cache_as, style)) in images.into_iter().enumerate() {
                yaml.push_str(&render("- source", &source, style, "  "));
                yaml.push_str(&render("tag", &tag, style, "    "));
                if let Some(cache_as) = &cache_as {
                    yaml.push_str(&render("cache_as", cache_as, style, "    "));
                }
                if matches!(style, Style::Quoted) {
                    quoted_images.push((index, source, tag));
                }
            }
            if let Some((concurrency, pull, check, mut insecure, list_cache)) = settings {
                if list_cache {
                    insecure.push(cache.split('/').next().unwrap_or_default().to_owned());
                }
                yaml.push_str("settings:\n");
                for (key, value) in [
                    ("concurrency", concurrency),
                    ("pull_timeout_secs", pull),
                    ("check_timeout_secs", check),
                ] {
                    if let Some(value) = value {
                        yaml.push_str(&format!("  {key}: {value}\n"));
                    }
                }
                yaml.push_str("  insecure_registries:\n");
                for host in insecure {
                    yaml.push_str(&format!("    - {}\n", yaml_quoted(&host)));
                }
            }
            GeneratedConfig {
                yaml,
                quoted_images,
            }
        })
}

fn parse_and_resolve(bytes: &[u8]) -> Option<Result<Plan, plan::PlanError>> {
    let raw = config::parse(bytes).ok()?;
    Some(plan::resolve(raw, Path::new("fuzz.yaml")))
}

/// `cases` per property, with every failure persisted: proptest appends the failing case's
/// seed to `tests/proptest-regressions/hostile_input.txt` (commit it) and replays every seed
/// there before drawing new cases. `PROPTEST_RNG_SEED` (set by `scripts/test`) fixes the
/// draw, so a CI failure reproduces with the same variable locally.
pub(crate) fn persisted(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(persisted(256))]

    #[test]
    fn reference_parsers_accept_only_safe_round_tripping_values(raw in hostile_string()) {
        if let Ok(repository) = timed("parse_source", raw.len(), || Repository::parse_source(&raw)) {
            check_repository("parse_source", &repository);
            prop_assert_eq!(Repository::parse_source(&repository.to_string()), Ok(repository));
        }
        if let Ok(tag) = timed("Tag::parse", raw.len(), || Tag::parse(&raw)) {
            check_tag("Tag::parse", &tag);
            prop_assert_eq!(tag.as_str(), raw.as_str());
        }
        if let Ok(host) = timed("parse_host", raw.len(), || reference::parse_host(&raw)) {
            assert_safe("parse_host", &host, host_char);
            assert_host_grammar(&host);
            prop_assert_eq!(reference::parse_host(&host), Ok(host.clone()));
        }
        if let Ok(path) = timed("parse_path", raw.len(), || reference::parse_path(&raw)) {
            assert_safe("parse_path", &path, path_char);
            prop_assert_eq!(reference::parse_path(&path), Ok(path.clone()));
        }
        // `discover`'s whole references: normalising is idempotent (the printed form reads
        // back to the same reference), and the repository part obeys the source grammar.
        if let Ok(image) = timed("ImageRef::parse", raw.len(), || reference::ImageRef::parse(&raw)) {
            check_repository("ImageRef::parse", image.repository());
            let printed = image.to_string();
            let again = reference::ImageRef::parse(&printed);
            prop_assert_eq!(again.as_ref().map(ToString::to_string), Ok(printed.clone()));
            prop_assert_eq!(again.as_ref().map(|i| i.repository().clone()), Ok(image.repository().clone()));
            prop_assert_eq!(again.as_ref().ok().and_then(|i| i.digest().cloned()), image.digest().cloned());
        }
    }

    #[test]
    fn image_references_with_any_tag_and_digest_round_trip(
        name in "[a-z0-9]{1,8}(\\.[a-z]{2,4}(:[0-9]{1,5})?/)?[a-z0-9]{1,6}(/[a-z0-9]{1,6}){0,2}",
        tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        digest in proptest::option::of("[0-9a-f]{64}"),
    ) {
        let raw = format!(
            "{name}{}{}",
            tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default(),
            digest.as_ref().map(|d| format!("@sha256:{d}")).unwrap_or_default()
        );
        if let Ok(image) = reference::ImageRef::parse(&raw) {
            let printed = image.to_string();
            match &digest {
                Some(d) => prop_assert!(printed.ends_with(&format!("@sha256:{d}")), "{}", printed),
                None => prop_assert!(printed.ends_with(&format!(":{}", tag.as_deref().unwrap_or("latest"))), "{}", printed),
            }
            prop_assert_eq!(reference::ImageRef::parse(&printed).map(|i| i.to_string()), Ok(printed));
        }
    }

    /// A digest is kept as its bytes, not its text: what reads back is the text it came
    /// from, ordered and compared as the text is, and anything but lower-case hex of the
    /// algorithm's exact length is refused.
    #[test]
    fn digests_read_back_as_the_text_they_came_from_and_order_as_text(
        a in "sha(256:[0-9a-f]{64}|512:[0-9a-f]{128})",
        b in "sha(256:[0-9a-f]{64}|512:[0-9a-f]{128})",
        hostile in hostile_string(),
    ) {
        let (da, db) = (reference::Digest::parse(&a), reference::Digest::parse(&b));
        let (da, db) = (da.expect("a digest"), db.expect("a digest"));
        prop_assert_eq!(&*da.text(), a.as_str());
        prop_assert_eq!(da.to_string(), a.clone());
        prop_assert_eq!(serde_json::to_string(&da).expect("serialises"), format!("\"{}\"", a));
        prop_assert_eq!(da.cmp(&db), a.cmp(&b));
        prop_assert_eq!(da == db, a == b);
        prop_assert!(reference::Digest::parse(&a.to_uppercase()).is_none());
        prop_assert!(reference::Digest::parse(&a[..a.len() - 1]).is_none());
        let longer = format!("{a}0");
        prop_assert!(reference::Digest::parse(&longer).is_none());
        if let Some(digest) = reference::Digest::parse(&hostile) {
            prop_assert_eq!(&*digest.text(), hostile.trim());
        }
    }

    #[test]
    fn config_parse_never_panics_on_arbitrary_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            // YAML-ish bytes: structure characters, with invalid UTF-8 mixed in.
            prop::collection::vec(
                prop::sample::select(&b"ab:-[]{}&*!|>'\"#\n \t\x00\xff\xc3\x28%@`,?"[..]),
                0..2048,
            ),
        ]
    ) {
        let result = timed("config::parse", bytes.len(), || parse_and_resolve(&bytes));
        if std::str::from_utf8(&bytes).is_err() {
            let message = config::parse(&bytes).err().unwrap_or_default();
            prop_assert!(message.contains("not valid UTF-8"), "{}", message);
        }
        if let Some(Ok(plan)) = result {
            check_plan(&plan);
        }
    }

    #[test]
    fn config_parse_never_panics_on_arbitrary_text(text in hostile_string()) {
        let result = timed("config::parse", text.len(), || parse_and_resolve(text.as_bytes()));
        if let Some(Ok(plan)) = result {
            check_plan(&plan);
        }
    }
}

proptest! {
    #![proptest_config(persisted(384))]

    #[test]
    fn yaml_shaped_configs_resolve_only_to_safe_plans(generated in generated_config()) {
        let bytes = generated.yaml.as_bytes();
        let raw = timed("config::parse", bytes.len(), || config::parse(bytes));
        let Ok(raw) = raw else { return Ok(()) };
        for (index, source, tag) in &generated.quoted_images {
            prop_assert_eq!(&raw.images[*index].source, source, "quoting kept the value");
            prop_assert_eq!(&raw.images[*index].tag, tag, "quoting kept the value");
        }
        let resolved = timed("plan::resolve", bytes.len(), || {
            plan::resolve(raw, Path::new("fuzz.yaml"))
        });
        match resolved {
            Ok(plan) => check_plan(&plan),
            Err(error) => {
                // Every problem is one line naming where it is. (That hostile values are
                // never echoed whole is a known bug, shown by
                // `hostile_values_are_not_echoed_whole_in_messages`; not checked here.)
                prop_assert!(!error.problems.is_empty());
                for problem in &error.problems {
                    prop_assert!(!problem.location.is_empty());
                    prop_assert!(!problem.message.contains('\n'), "{:?}", problem.message);
                    prop_assert!(!problem.location.contains('\n'), "{:?}", problem.location);
                }
            }
        }
    }
}

/// A cache path prefix and a `cache_as` (or a source path) that are each valid, but together
/// longer than a repository name may be: the plan must not accept a target crane will
/// refuse (found by the fuzzing above).
#[test]
fn a_cache_target_longer_than_a_repository_name_is_refused() {
    let prefix = "p".repeat(200);
    let cache_as = "c".repeat(200);
    let yaml = format!(
        "cache_registry: \"cache:5000/{prefix}\"\nimages:\n  - {{source: nginx, tag: \"1\", cache_as: \"{cache_as}\"}}\n  - {{source: \"ghcr.io/{}\", tag: \"1\"}}\n",
        "s".repeat(200)
    );
    let raw = config::parse(yaml.as_bytes()).expect("valid YAML");
    match plan::resolve(raw, Path::new("long.yaml")) {
        Ok(plan) => panic!(
            "accepted cache targets of {:?} characters",
            plan.jobs
                .iter()
                .map(|job| job.target.to_string().len())
                .collect::<Vec<_>>()
        ),
        Err(error) => {
            let locations: Vec<&str> = error
                .problems
                .iter()
                .map(|problem| problem.location.as_str())
                .collect();
            assert_eq!(locations.len(), 2, "{error}");
            assert!(locations[0].starts_with("images[0]"), "{error}");
            assert!(locations[0].ends_with("field `cache_as`"), "{error}");
            assert!(locations[1].starts_with("images[1]"), "{error}");
            assert!(error.to_string().len() < 2000, "{error}");
        }
    }
}

/// 1 GiB of address space: plenty for image-sync (a tokio runtime reserves some), far too
/// little for an expanded YAML bomb.
const MEMORY_LIMIT_KIB: u64 = 1024 * 1024;

/// How long a config error may take through the binary (a debug build, on a busy machine).
const RUN_BUDGET: Duration = Duration::from_secs(10);

/// Runs the binary under an address-space limit (runaway memory aborts it), killing it
/// after `deadline`: `Err(elapsed)` when it had to be killed.
fn run_limited_for(run: &ImageSync, deadline: Duration) -> Result<(Outcome, Duration), Duration> {
    let inner = run.command();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(format!(
            "ulimit -v {MEMORY_LIMIT_KIB} && exec \"$0\" \"$@\""
        ))
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdin(Stdio::null());
    // Files, not pipes: a child blocked on a full pipe would look like a hang.
    let stdout_path = run.dir().join("limited.stdout");
    let stderr_path = run.dir().join("limited.stderr");
    command
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    if let Some(dir) = inner.get_current_dir() {
        command.current_dir(dir);
    }
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let started = Instant::now();
    // `exec`: the child is image-sync itself, so killing it kills the run.
    let mut child = command.spawn().expect("run image-sync under ulimit");
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll image-sync") {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let output = std::process::Output {
        status,
        stdout: std::fs::read(&stdout_path).expect("read stdout"),
        stderr: std::fs::read(&stderr_path).expect("read stderr"),
    };
    Ok((outcome(output), elapsed))
}

/// [`run_limited_for`] with [`RUN_BUDGET`], panicking when it had to be killed.
fn run_limited(run: &ImageSync) -> Outcome {
    match run_limited_for(run, RUN_BUDGET) {
        Ok((outcome, _)) => outcome,
        Err(elapsed) => panic!("image-sync still running after {elapsed:?}; killed"),
    }
}

/// Exit 2, no panic, no report, and `needle` in the message.
fn assert_config_error(outcome: &Outcome, needle: &str) {
    assert_eq!(
        outcome.code, 2,
        "exit code; stdout:\n{}\nstderr:\n{}",
        outcome.stdout, outcome.stderr
    );
    assert!(!outcome.stderr.contains("panicked"), "{}", outcome.stderr);
    assert!(outcome.stdout.is_empty(), "no report: {}", outcome.stdout);
    assert!(
        outcome.stderr.contains(needle),
        "expected `{needle}` in:\n{}",
        outcome.stderr
    );
}

/// The message is a few lines, not an echo of a hostile input.
fn assert_short(outcome: &Outcome) {
    assert!(
        outcome.stderr.len() < 4096,
        "a short message, not an echo of the input ({} bytes): {}...",
        outcome.stderr.len(),
        outcome.stderr.chars().take(300).collect::<String>()
    );
}

const VALID: &str =
    "cache_registry: \"cache.example:5000\"\nimages:\n  - source: nginx\n    tag: \"1.27\"\n";

#[test]
fn the_memory_limit_leaves_room_for_a_normal_run() {
    run_limited(&ImageSync::new().config(VALID).arg("--check")).expect_code(0);
}

#[test]
fn a_100_mb_config_is_refused_without_being_read() {
    let run = ImageSync::new();
    let path = run.dir().join("huge.yaml");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(100 * 1024 * 1024).expect("sparse 100 MB file");
    drop(file);
    let outcome = run_limited(&run.arg("--config").arg(&path).arg("--check"));
    assert_config_error(&outcome, "huge.yaml: is 104857600 bytes");
    assert!(
        outcome.stderr.contains(&MAX_CONFIG_BYTES.to_string()),
        "{}",
        outcome.stderr
    );
    assert_short(&outcome);
}

#[test]
fn a_config_at_the_size_limit_is_read_and_one_byte_more_is_not() {
    let limit = usize::try_from(MAX_CONFIG_BYTES).expect("limit fits");
    let mut at_limit = String::from(VALID);
    at_limit.push('#');
    while at_limit.len() < limit - 1 {
        at_limit.push('x');
    }
    at_limit.push('\n');
    assert_eq!(at_limit.len(), limit);
    run_limited(&ImageSync::new().config(&at_limit).arg("--check")).expect_code(0);

    at_limit.insert_str(0, "#\n");
    let outcome = run_limited(&ImageSync::new().config(&at_limit).arg("--check"));
    assert_config_error(&outcome, "a config is at most");
    assert_short(&outcome);
}

#[test]
fn a_device_or_directory_as_config_is_refused_without_reading() {
    for path in ["/dev/zero", "/dev/urandom", "/tmp"] {
        let outcome = run_limited(&ImageSync::new().arg("--config").arg(path).arg("--check"));
        assert_config_error(&outcome, "is not a regular file");
        assert_short(&outcome);
    }
}

/// Nine anchors, each a list of nine aliases of the one before: 9^9 leaves once expanded.
fn billion_laughs(leaves: &str) -> String {
    let mut bomb = format!("a: &a [{leaves}]\n");
    for level in 0..9 {
        let previous = if level == 0 {
            "a".to_owned()
        } else {
            format!("l{}", level - 1)
        };
        let refs = vec![format!("*{previous}"); 9].join(",");
        bomb.push_str(&format!("l{level}: &l{level} [{refs}]\n"));
    }
    bomb
}

#[test]
fn yaml_alias_bombs_are_refused_quickly_within_bounded_memory() {
    let lol = ["\"lol\""; 9].join(",");
    let cases = [
        // Top-level anchors: unknown keys, refused before any expansion.
        (billion_laughs(&lol), "unknown field `a`"),
        // After an error inside `images`, the loader re-reads the whole file leniently to
        // name the image: the bomb is expanded there, up to serde_yaml_ng's limit.
        (
            format!(
                "images:\n  - {{source: nginx, tag: \"1\", bad: 1}}\ncache_registry: c\n{}",
                billion_laughs(&lol)
            ),
            "images[0]",
        ),
        // An alias where a string belongs.
        (
            format!(
                "cache_registry: c:5000\nimages:\n  - {{source: nginx, tag: &t [{lol}]}}\n  - {{source: redis, tag: *t}}\n"
            ),
            "invalid type: sequence, expected a string",
        ),
    ];
    for (bomb, needle) in cases {
        let outcome = run_limited(&ImageSync::new().config(&bomb).arg("--check"));
        assert_config_error(&outcome, needle);
        assert_short(&outcome);
    }
}

/// A wide anchor aliased many times (no nesting, so serde_yaml_ng's repetition limit,
/// which counts alias jumps, never trips): N aliases of an N-element list expand to N²
/// nodes. Strict parsing stops at the first error without expanding, but an error inside
/// `images` makes config.rs (`image_source_at`) re-parse the whole file into a
/// `serde_yaml_ng::Value` to name the image, and that expands everything: measured here,
/// 21 KB took 40 s and 940 MB, 42 KB ran out of 3.3 GB after 75 s (debug build).
#[test]
fn a_wide_alias_fan_out_after_an_image_error_is_refused_within_bounded_memory() {
    let width = 6000;
    let yaml = format!(
        "images:\n  - {{source: nginx, tag: \"1\", bad: 1}}\ncache_registry: c\nwide: &w [{}]\nfan: [{}]\n",
        vec!["x"; width].join(", "),
        vec!["*w"; width].join(", ")
    );
    assert!(yaml.len() < 50_000, "a small file: {} bytes", yaml.len());
    match run_limited_for(&ImageSync::new().config(&yaml).arg("--check"), RUN_BUDGET) {
        Ok((outcome, _)) => assert_config_error(&outcome, "images[0]"),
        Err(elapsed) => panic!("a {} byte config ran {elapsed:?}; killed", yaml.len()),
    }
}

#[test]
fn deeply_nested_yaml_is_refused_without_overflowing_the_stack() {
    for nested in [
        format!("cache_registry: {}\n", "[".repeat(10_000)),
        format!("cache_registry: c\nimages: {}", "- ".repeat(100_000)),
        format!("cache_registry: c\nimages: {}\n", "{a: ".repeat(10_000)),
        format!(
            "cache_registry: c\nimages:\n{}",
            (0..2_000)
                .map(|depth| format!("{}- \n", "  ".repeat(depth)))
                .collect::<String>()
        ),
    ] {
        let outcome = run_limited(&ImageSync::new().config(&nested).arg("--check"));
        assert_config_error(&outcome, "config.yaml");
        assert_short(&outcome);
    }
}

/// Flow nesting costs quadratic time in the YAML scanner (libyaml's simple-key bookkeeping,
/// which serde_yaml_ng uses through unsafe-libyaml): depth 20 000 took 2.4 s, 40 000 took
/// 2.1 s even in a release build, so a 1 MiB ConfigMap of `[` takes tens of minutes and a
/// 4 MiB file hours. serde refuses anything deeper than 128 anyway, so a cheap depth check
/// before parsing would bound it.
#[test]
fn deep_flow_nesting_is_refused_in_linear_time() {
    let nested = format!("cache_registry: {}\n", "[".repeat(200_000));
    match run_limited_for(&ImageSync::new().config(&nested).arg("--check"), RUN_BUDGET) {
        Ok((outcome, _)) => assert_config_error(&outcome, "config.yaml"),
        Err(elapsed) => panic!("a {} byte config ran {elapsed:?}; killed", nested.len()),
    }
}

#[test]
fn a_config_that_is_not_utf8_is_refused() {
    let run = ImageSync::new();
    let path = run.write(
        "latin1.yaml",
        b"cache_registry: c:5000\nimages:\n  - source: caf\xe9\n    tag: \"1\"\n",
    );
    let outcome = run_limited(&run.arg("--config").arg(&path).arg("--check"));
    assert_config_error(&outcome, "is not valid UTF-8 (first bad byte at offset 46)");
    assert_short(&outcome);
}

#[test]
fn a_newline_then_an_option_is_refused_naming_the_image_and_field() {
    let cases = [
        (
            "cache_registry: c:5000\nimages:\n  - source: nginx\n    tag: \"1.0\\n--insecure\"\n",
            "images[0] (source `nginx`) field `tag`: `1.0\\n--insecure` contains whitespace",
        ),
        (
            "cache_registry: c:5000\nimages:\n  - source: \"nginx\\n--insecure\"\n    tag: \"1.0\"\n",
            "images[0] (source `nginx\\n--insecure`) field `source`",
        ),
        (
            "cache_registry: c:5000\nimages:\n  - source: redis\n    tag: \"7\"\n  - source: nginx\n    tag: \"1.0\"\n    cache_as: |\n      mirror/nginx\n      --insecure\n",
            "images[1] (source `nginx`) field `cache_as`",
        ),
        (
            "cache_registry: \"c:5000\\n--insecure\"\nimages:\n  - source: nginx\n    tag: \"1.0\"\n",
            "cache_registry",
        ),
        (
            "cache_registry: c:5000\nimages:\n  - source: nginx\n    tag: \"1.0\"\nsettings:\n  insecure_registries: [\"c:5000\\n--insecure\"]\n",
            "settings.insecure_registries[0]",
        ),
    ];
    for (yaml, location) in cases {
        let outcome = run_limited(&ImageSync::new().config(yaml).arg("--check"));
        assert_config_error(&outcome, location);
        assert!(
            outcome.stderr.contains("whitespace or control characters"),
            "{}",
            outcome.stderr
        );
        // The value is escaped in the message: no line of stderr starts with the option.
        assert!(
            !outcome
                .stderr
                .lines()
                .any(|line| line.trim_start().starts_with("--insecure")),
            "{}",
            outcome.stderr
        );
        assert_short(&outcome);
    }
}

#[test]
fn hundred_thousand_character_values_are_refused_quickly_naming_each_field() {
    let long = "a".repeat(100_000);
    let yaml = format!(
        "cache_registry: \"{long}\"\nimages:\n  - source: \"{long}\"\n    tag: \"{long}\"\n    cache_as: \"{long}\"\nsettings:\n  insecure_registries: [\"{long}\"]\n"
    );
    let outcome = run_limited(&ImageSync::new().config(&yaml).arg("--check"));
    assert_config_error(&outcome, "images[0]");
    for location in [
        "field `source`",
        "field `tag`",
        "field `cache_as`",
        "cache_registry",
        "settings.insecure_registries[0]",
    ] {
        assert!(outcome.stderr.contains(location), "{location}");
    }
}

/// plan.rs shortens every value it quotes ("a hostile 100 MB string must not be" echoed),
/// but `ReferenceError::BadHost`, `BadComponent` and `TagInSource` carry the raw value and
/// their `Display` prints it whole: 100k-character values come back as a 200 KB message.
#[test]
fn hostile_values_are_not_echoed_whole_in_messages() {
    let long = "a".repeat(100_000);
    for yaml in [
        format!("cache_registry: \"{long}\"\nimages:\n  - {{source: nginx, tag: \"1\"}}\n"),
        format!("cache_registry: c\nimages:\n  - {{source: \"nginx:{long}\", tag: \"1\"}}\n"),
        format!("cache_registry: c\nimages:\n  - {{source: \"x.io/A{long}\", tag: \"1\"}}\n"),
        format!(
            "cache_registry: c\nimages:\n  - {{source: nginx, tag: \"1\"}}\nsettings:\n  insecure_registries: [\"{long}\"]\n"
        ),
    ] {
        let outcome = run_limited(&ImageSync::new().config(&yaml).arg("--check"));
        assert_config_error(&outcome, "config.yaml");
        assert_short(&outcome);
    }
}

/// `reference::split_port` takes `[...]` as the host and then only looks for `:port`:
/// whatever else follows the `]` must be refused, not silently kept (found by the fuzzing
/// above: `[::1]$(id)` once passed as a host).
#[test]
fn an_ipv6_host_with_trailing_text_is_refused() {
    for host in ["[::1]a", "[::1]$(id)", "[::1]`id`;x", "[::1]]:5000"] {
        assert!(
            reference::parse_host(host).is_err(),
            "parse_host accepted {host:?}"
        );
        assert!(
            Repository::parse_source(&format!("{host}/app")).is_err(),
            "parse_source accepted {host:?}/app"
        );
    }
    let outcome = run_limited(
        &ImageSync::new()
            .config("cache_registry: \"[::1]$(reboot)\"\nimages:\n  - {source: \"[::1]x/app\", tag: \"1\"}\n")
            .arg("--check"),
    );
    assert_config_error(&outcome, "cache_registry");
}
