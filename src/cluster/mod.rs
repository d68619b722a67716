//! Talking to the Kubernetes API of the cluster image-sync runs in.

pub mod lease;
