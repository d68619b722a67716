//! Carrying out a plan: the fan-out over images, the copy-or-skip decision, breakers,
//! retries, referrers, tag listings, shard partitioning and signals. Reads `input`,
//! writes `output`.

pub mod breaker;
pub mod coordination;
pub mod coverage;
pub mod decision;
pub mod partition;
pub mod platforms;
pub mod prune;
pub mod referrers;
pub mod retry;
pub mod signals;
pub mod sync;
pub mod tag_listing;
