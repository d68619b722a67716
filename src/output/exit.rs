//! Exit codes: named, documented in `--help`, the README and docs/src/usage.md, derived from
//! the report.

use crate::output::report::Report;

/// Every image synced or already cached (or failures with `skip_on_error: true`).
pub const SUCCESS: u8 = 0;
/// At least one image failed.
pub const IMAGES_FAILED: u8 = 1;
/// Usage or config error: nothing was attempted.
pub const USAGE: u8 = 2;
/// Interrupted by SIGINT (128 + 2).
pub const INTERRUPTED: u8 = 130;
/// Terminated by SIGTERM (128 + 15), as Kubernetes does at a deadline or eviction.
pub const TERMINATED: u8 = 143;

/// The text `--help` shows after the options.
pub const HELP: &str = "\
Exit codes:
  0    every image synced or already cached (or failures with skip_on_error: true)
  1    at least one image failed (the JSON report on stdout says which and why)
  2    usage or config error: nothing was attempted
  130  interrupted (SIGINT); 143 terminated (SIGTERM); the report is still printed";

/// The exit code for a finished run.
pub fn for_report(report: &Report, skip_on_error: bool) -> u8 {
    if report.summary.failed > 0 && !skip_on_error {
        IMAGES_FAILED
    } else {
        SUCCESS
    }
}
