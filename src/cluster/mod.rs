//! Talking to the Kubernetes API (kube-rs): building a client from a kubeconfig or the
//! in-cluster service account, and the cache's Lease.

pub mod client;
pub mod lease;
