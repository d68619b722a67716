//! The `prune` report, plain data: what would go or went, what stays and why, how the
//! cache deletes; printed alone by `image-sync prune` (`{"prune": ...}`) and inside the
//! run's report after `settings.prune`. `run::prune` fills it.

use serde::Serialize;

/// One recorded tag that stays.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Kept {
    /// `host/repository:tag`.
    pub image: String,
    /// Why it stays.
    pub why: String,
}

/// The `prune` report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Tags that go (without `--apply`: would go).
    pub would_delete: Vec<String>,
    /// Tags deleted in this run.
    pub deleted: Vec<String>,
    /// Recorded tags that stay, and why.
    pub kept: Vec<Kept>,
    /// How the cache deletes: `tag`, `digest` or `disabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletes: Option<&'static str>,
    /// Why prune stopped, or null.
    pub error: Option<String>,
}

/// `{"prune": ...}` on stdout.
#[derive(Serialize)]
struct Printed<'a> {
    prune: &'a PruneReport,
}

impl PruneReport {
    /// Prints `{"prune": ...}` as pretty JSON.
    pub fn print(&self, out: &mut impl std::io::Write) {
        let written = serde_json::to_writer_pretty(&mut *out, &Printed { prune: self })
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush());
        if let Err(err) = written {
            tracing::warn!(error = %err, "could not write the prune report to stdout");
        }
    }
}
