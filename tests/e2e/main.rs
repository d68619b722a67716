//! End-to-end tests: the real `image-sync` binary against real Distribution registries on
//! 127.0.0.1, with real crane and real skopeo, and images made by the tests themselves.

mod cli;
mod config_errors;
mod discover;
mod fault_proxy;
mod first_hour;
mod hostile_input;
mod hostile_registry;
mod nodes;
mod pins;
mod platforms;
mod prune;
mod prune_properties;
mod quota;
mod referrers;
mod registry_client;
mod reliability;
mod shards;
mod support;
mod sync;
mod tags;
mod tls_fixture;
