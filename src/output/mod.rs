//! What a run leaves behind: the JSON report (plain data), the metrics, the exit code and
//! the logs. Nothing here imports `run`.

pub mod exit;
pub mod logging;
pub mod metrics;
pub mod prune_report;
pub mod report;
