//! `image-sync discover`: which images a cluster (or the manifests about to be applied to
//! it) will pull, normalised, with where each was found, and which of them the config's
//! cache would not serve.

pub mod cluster;
pub mod command;
pub mod coverage;
pub mod format;
pub mod inventory;
pub mod manifests;
pub mod workload;
