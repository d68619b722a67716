//! Logs for people: tracing to stderr, filtered by RUST_LOG (default `info`), as text or
//! JSON lines. stdout is reserved for the report.
//!
//! A bare level in RUST_LOG (`debug`) applies to image-sync only; libraries (the HTTP
//! client's connection pool, TLS) stay at `warn`, so `RUST_LOG=debug` shows what
//! image-sync did, not forty lines of pooled connections. A library named explicitly
//! (`RUST_LOG=debug,hyper_util=debug`) is logged as asked.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use crate::input::cli::LogFormat;

/// The tracing target of image-sync's own events (its crate name).
const OWN_TARGET: &str = "image_sync";

/// The level libraries log at unless RUST_LOG names them.
const LIBRARY_LEVEL: LevelFilter = LevelFilter::WARN;

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let requested = std::env::var("RUST_LOG").ok();
    let (filter, problem) = match EnvFilter::try_new(directives(requested.as_deref())) {
        Ok(filter) => (filter, None),
        Err(err) => (
            EnvFilter::new(directives(None)),
            Some(format!(
                "RUST_LOG `{}` is not a valid filter ({err}); logging at `info`. Write a level (`debug`) or `target=level` pairs separated by commas",
                crate::input::reference::shorten(requested.as_deref().unwrap_or_default())
            )),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    // An error only means a subscriber is already installed (tests); keep that one.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
}

/// The filter directives for a RUST_LOG value: a bare level becomes image-sync's level,
/// libraries stay at [`LIBRARY_LEVEL`] (or quieter, if the level is), and `target=level`
/// directives are kept as written. Unset or empty means `info`.
pub fn directives(rust_log: Option<&str>) -> String {
    let mut own = LevelFilter::INFO;
    let mut explicit = Vec::new();
    for directive in rust_log.unwrap_or_default().split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        match directive.parse::<LevelFilter>() {
            Ok(level) => own = level,
            Err(_) => explicit.push(directive),
        }
    }
    // LevelFilter orders by verbosity: OFF < ERROR < WARN < INFO < DEBUG < TRACE.
    let libraries = own.min(LIBRARY_LEVEL);
    let mut out = vec![
        libraries.to_string().to_lowercase(),
        format!("{OWN_TARGET}={}", own.to_string().to_lowercase()),
    ];
    out.extend(explicit.into_iter().map(str::to_owned));
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_is_image_syncs_and_libraries_stay_at_warn() {
        assert_eq!(directives(None), "warn,image_sync=info");
        assert_eq!(directives(Some("")), "warn,image_sync=info");
        assert_eq!(directives(Some("debug")), "warn,image_sync=debug");
        assert_eq!(directives(Some("TRACE")), "warn,image_sync=trace");
        assert_eq!(directives(Some("error")), "error,image_sync=error");
        assert_eq!(directives(Some("off")), "off,image_sync=off");
    }

    #[test]
    fn libraries_named_explicitly_are_logged_as_asked() {
        assert_eq!(
            directives(Some("debug,hyper_util=debug")),
            "warn,image_sync=debug,hyper_util=debug"
        );
        assert_eq!(
            directives(Some("reqwest=trace")),
            "warn,image_sync=info,reqwest=trace"
        );
        // A more specific image-sync directive still wins over the bare level.
        assert_eq!(
            directives(Some("debug, image_sync::run::sync=trace")),
            "warn,image_sync=debug,image_sync::run::sync=trace"
        );
    }

    #[test]
    fn every_rewritten_filter_is_valid() {
        for value in ["debug", "info,reqwest=debug", "warn", "image_sync=trace"] {
            assert!(
                EnvFilter::try_new(directives(Some(value))).is_ok(),
                "{value}"
            );
        }
        assert!(EnvFilter::try_new(directives(Some("debug,=x=y"))).is_err());
    }
}
