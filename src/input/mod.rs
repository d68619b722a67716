//! What the user asked for: the command line, the config file as written (raw), and the
//! validated plan it resolves into before anything runs (references, tag rules, pins,
//! the shard argument). Nothing here talks to a registry or imports `run`.

pub mod cli;
pub mod config;
pub mod pins;
pub mod plan;
pub mod platforms;
pub mod reference;
pub mod schema;
pub mod shard;
pub mod tag_rules;
