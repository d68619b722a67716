//! The report's `lease` field (`--lease`): plain data that `run::coordination` fills.

use serde::Serialize;

/// The report's `lease` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseReport {
    /// The Lease's name (in the pod's namespace).
    pub name: String,
    /// This run's holder identity.
    pub holder: String,
    /// What asking for the lease came to.
    pub outcome: LeaseOutcome,
    /// The run holding the lease, when `held`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// Seconds until the other run's lease expires unless renewed, when `held`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<i64>,
    /// Why, when `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `lease.outcome` in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseOutcome {
    /// This run held the lease and synced.
    Acquired,
    /// Another run held it; this run copied nothing (a success for a CronJob).
    Held,
    /// The lease could not be read or written; nothing was copied.
    Error,
}
